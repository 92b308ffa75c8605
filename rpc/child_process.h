// Running pdserve's binaries as child processes (launch/local_cluster.h): output in a log file,
// the port learned from the --port-file each server writes once it serves.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve::rpc {

// One child process; killed (SIGKILL) and reaped on destruction if still running. Waits for its
// exit are event-driven through a pidfd (Linux >= 5.3); on older kernels they re-check every few
// milliseconds. Waits for a stop are woken by a watcher thread that blocks in waitid() until the
// child is stopped or has exited (a pidfd's poll says nothing of stops), started by such a wait
// and ended by what it waits for, at the latest by the kill on destruction.
// Thread-compatible: one thread at a time.
class ChildProcess {
 public:
  // Starts `argv` (argv[0] is a path) with stdout and stderr appended to `log_path`. The child
  // inherits this process's environment, with `env` ("NAME=value" entries) added over it.
  ChildProcess(std::vector<std::string> argv, std::string log_path,
               std::vector<std::string> env = {});
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
  // Waits up to `timeout` until the process is stopped (SIGSTOP or another stop signal: true) or
  // has exited (false; it is reaped). DEADLINE_EXCEEDED when neither happens in time. A process
  // stopped already counts at once.
  absl::StatusOr<bool> WaitStopped(std::chrono::milliseconds timeout);
  // WaitStopped for several processes: returns the first of `processes` found stopped or exited
  // (running() tells which).
  static absl::StatusOr<ChildProcess*> WaitAnyStopped(std::span<ChildProcess* const> processes,
                                                      std::chrono::milliseconds timeout);
  // True while not reaped: a stopped process is running.
  bool running();
  // How the process ended once reaped ("exited with code 3", "killed by signal 9"), for
  // failure messages; "running" before.
  std::string ExitDescription() const;
  // The tail of the log, for failure messages.
  std::string LogTail(size_t bytes = 4000) const;

 private:
  // Starts the watcher thread behind WaitAnyStopped unless one is waiting already: it makes
  // `state_events_` readable once the process is stopped or has exited, and ends. Nothing starts
  // where an eventfd cannot be made.
  void WatchForStop();
  // Stopped (true), exited (false, reaped), or neither (nullopt).
  std::optional<bool> StoppedOrExited();

  pid_t pid_ = -1;
  int pidfd_ = -1;
  int state_events_ = -1;  // an eventfd, once WatchForStop has run
  std::thread watcher_;
  std::atomic<bool> watcher_done_{false};  // the watcher has reported and ends
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
