// Running pdserve's binaries as child processes (launch/local_cluster.h): output in a log file,
// the port learned from the --port-file each server writes once it serves.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve::rpc {

// One child process; killed (SIGKILL) and reaped on destruction if still running. Waits for its
// exit are event-driven through a pidfd (Linux >= 5.3); on older kernels they re-check every few
// milliseconds. Thread-compatible: one thread at a time.
class ChildProcess {
 public:
  // Starts `argv` (argv[0] is a path) with stdout and stderr appended to `log_path`.
  ChildProcess(std::vector<std::string> argv, std::string log_path);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }
  // Readable (POLLIN) once the process has exited; -1 where pidfd_open is unavailable.
  int pidfd() const { return pidfd_; }
  void Signal(int sig);
  // Waits up to `timeout` for the exit; returns the wait status, or -1 on timeout.
  int Wait(std::chrono::milliseconds timeout);
  bool running();
  // How the process ended once reaped ("exited with code 3", "killed by signal 9"), for
  // failure messages; "running" before.
  std::string ExitDescription() const;
  // The tail of the log, for failure messages.
  std::string LogTail(size_t bytes = 4000) const;

 private:
  pid_t pid_ = -1;
  int pidfd_ = -1;
  std::string log_path_;
  bool reaped_ = false;
  int wait_status_ = 0;  // valid once reaped_
};

// Waits until `path` holds a port number, as rpc::Server::WritePortFile writes it (atomically)
// once a server serves, and returns it. Wakes on events, not on a timer: inotify on the file's
// directory and the process's pidfd. A file left from an earlier run counts, so remove it before
// starting the process. UNAVAILABLE when `process` exits first, DEADLINE_EXCEEDED when `timeout`
// passes, NOT_FOUND when the file's directory does not exist.
absl::StatusOr<int> WaitForPortFile(const std::string& path, ChildProcess& process,
                                    std::chrono::milliseconds timeout);

// <name> in the directory of the running executable (build/bin).
std::string BinaryPath(const std::string& name);

}  // namespace pdserve::rpc
