// Running pdserve's binaries as child processes (the demo and the multi-process tests): output in
// a log file, the port learned from the --port-file each server writes once it serves.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace pdserve::rpc {

// One child process; killed (SIGKILL) and reaped on destruction if still running.
class ChildProcess {
 public:
  // Starts `argv` (argv[0] is a path) with stdout and stderr appended to `log_path`.
  ChildProcess(std::vector<std::string> argv, std::string log_path);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }
  void Signal(int sig);
  // Waits up to `timeout` for the exit; returns the wait status, or -1 on timeout.
  int Wait(std::chrono::milliseconds timeout);
  bool running();
  // The tail of the log, for failure messages.
  std::string LogTail(size_t bytes = 4000) const;

 private:
  pid_t pid_ = -1;
  std::string log_path_;
  bool reaped_ = false;
};

// Polls `path` until it holds a port number (written by a server once it serves) or `timeout`
// passes (returns 0) or `process` exits.
int WaitForPortFile(const std::string& path, ChildProcess& process,
                    std::chrono::milliseconds timeout);

// <name> in the directory of the running executable (build/bin).
std::string BinaryPath(const std::string& name);

}  // namespace pdserve::rpc
