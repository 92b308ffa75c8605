#include "rpc/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pdserve::rpc {
namespace {

using Clock = std::chrono::steady_clock;

// How often a wait without events to wake it (no pidfd, no inotify) re-checks by itself.
constexpr int kRecheckMs = 10;

// A file descriptor closed on scope exit; -1 holds none.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() { reset(); }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// A pidfd for `pid` (our unreaped child, so the pid cannot have been reused); -1 on kernels
// before 5.3 (ENOSYS) or when the call fails otherwise.
int OpenPidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));  // close-on-exec by definition
#else
  (void)pid;
  return -1;
#endif
}

// Milliseconds from now to `deadline`, rounded up (0 once it has passed), for poll().
int MillisecondsUntil(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, INT_MAX));
}

// One step of an event loop: poll() on `fds` for up to `ms`. Without events to wake it
// (`bounded`) the step is cut to kRecheckMs so that the caller re-checks by itself. Errors
// (EINTR) are left to that re-check as well.
void PollFor(std::vector<pollfd>& fds, int ms, bool bounded) {
  if (bounded) ms = std::min(ms, kRecheckMs);
  poll(fds.data(), fds.size(), ms);
}

// The port in `path`, once a server has written one there.
std::optional<int> ReadPort(const std::string& path) {
  std::ifstream in(path);
  int port = 0;
  if (in >> port && port > 0) return port;
  return std::nullopt;
}

// Reads the pending events of a non-blocking inotify descriptor or eventfd: they only say "look
// again".
void DrainEvents(int fd) {
  alignas(inotify_event) char buffer[4096];
  while (read(fd, buffer, sizeof(buffer)) > 0) {
  }
}

// This process's environment with `overrides` ("NAME=value") put over it, for execve. Built
// before fork: the child of a multi-threaded process must not allocate.
std::vector<std::string> MergedEnvironment(const std::vector<std::string>& overrides) {
  const auto name = [](std::string_view entry) { return entry.substr(0, entry.find('=')); };
  std::vector<std::string> merged;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const bool replaced = std::any_of(overrides.begin(), overrides.end(),
                                      [&](const std::string& o) { return name(o) == name(entry); });
    if (!replaced) merged.emplace_back(entry);
  }
  merged.insert(merged.end(), overrides.begin(), overrides.end());
  return merged;
}

std::vector<char*> NullTerminated(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

// The watcher thread's body: blocks until the child (`pidfd`, else `pid`) is stopped or has
// exited, then makes `event_fd` readable. WNOWAIT leaves both reports in place for the owner's
// own checks and for its reaping.
void AwaitStopOrExit(int pidfd, pid_t pid, int event_fd) {
  siginfo_t info;
  int r = -1;
  if (pidfd >= 0) {
    do {
      r = waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WSTOPPED | WEXITED | WNOWAIT);
    } while (r != 0 && errno == EINTR);
  }
  if (r != 0 && (pidfd < 0 || errno == EINVAL)) {  // no pidfd, or a kernel before 5.4
    do {
      r = waitid(P_PID, static_cast<id_t>(pid), &info, WSTOPPED | WEXITED | WNOWAIT);
    } while (r != 0 && errno == EINTR);
  }
  // Any other error (ECHILD: reaped already) is news too: the owner looks again.
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t written = write(event_fd, &one, sizeof(one));
}

}  // namespace

ChildProcess::ChildProcess(std::vector<std::string> argv, std::string log_path,
                           std::vector<std::string> env)
    : log_path_(std::move(log_path)) {
  const std::vector<char*> args = NullTerminated(argv);
  std::vector<std::string> environment = MergedEnvironment(env);
  const std::vector<char*> envp = NullTerminated(environment);
  pid_ = fork();
  if (pid_ == 0) {
    const int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    // A test killed mid-run must not leave servers behind.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  if (pid_ < 0) {
    // Nothing to wait for: seen as a process that could not run (as a failed exec is).
    const std::string reason = std::strerror(errno);
    std::ofstream(log_path_, std::ios::app) << "fork failed: " << reason << "\n";
    reaped_ = true;
    wait_status_ = 127 << 8;
    return;
  }
  pidfd_ = OpenPidfd(pid_);
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    Wait(std::chrono::milliseconds(5000));
  }
  // The watcher returns once the child is stopped or gone, which the kill above guarantees.
  if (watcher_.joinable()) watcher_.join();
  if (state_events_ >= 0) close(state_events_);
  if (pidfd_ >= 0) close(pidfd_);
}

void ChildProcess::Signal(int sig) {
  if (pid_ > 0 && !reaped_) kill(pid_, sig);
}

int ChildProcess::Wait(std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  std::vector<pollfd> fds;
  if (pidfd_ >= 0) fds.push_back({.fd = pidfd_, .events = POLLIN, .revents = 0});
  while (running()) {
    const int remaining = MillisecondsUntil(deadline);
    if (remaining == 0) return -1;
    PollFor(fds, remaining, /*bounded=*/fds.empty());
  }
  return wait_status_;
}

void ChildProcess::WatchForStop() {
  if (reaped_) return;
  if (state_events_ < 0) {
    state_events_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (state_events_ < 0) return;
  }
  if (watcher_.joinable()) {
    if (!watcher_done_.load()) return;
    watcher_.join();
  }
  watcher_done_ = false;
  watcher_ = std::thread([this, pidfd = pidfd_, pid = pid_, events = state_events_] {
    AwaitStopOrExit(pidfd, pid, events);
    watcher_done_ = true;
  });
}

std::optional<bool> ChildProcess::StoppedOrExited() {
  if (!running()) return false;
  siginfo_t info;
  info.si_pid = 0;  // stays 0 when no report is waiting
  if (waitid(P_PID, static_cast<id_t>(pid_), &info, WSTOPPED | WNOHANG | WNOWAIT) == 0 &&
      info.si_pid == pid_) {
    return true;
  }
  return std::nullopt;
}

absl::StatusOr<bool> ChildProcess::WaitStopped(std::chrono::milliseconds timeout) {
  ChildProcess* const self = this;
  absl::StatusOr<ChildProcess*> found = WaitAnyStopped({&self, 1}, timeout);
  if (!found.ok()) return found.status();
  return running();
}

absl::StatusOr<ChildProcess*> ChildProcess::WaitAnyStopped(std::span<ChildProcess* const> processes,
                                                           std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  std::vector<pollfd> fds;
  while (true) {
    // A watcher that has reported is started again: the stop it saw may have been continued.
    // Then drain, then look: a change after the look still wakes the poll.
    fds.clear();
    for (ChildProcess* p : processes) {
      p->WatchForStop();
      if (p->state_events_ >= 0) {
        fds.push_back({.fd = p->state_events_, .events = POLLIN, .revents = 0});
        DrainEvents(p->state_events_);
      }
    }
    for (ChildProcess* p : processes) {
      if (p->StoppedOrExited().has_value()) return p;
    }
    const int remaining = MillisecondsUntil(deadline);
    if (remaining == 0) {
      std::vector<pid_t> pids;
      for (const ChildProcess* p : processes) pids.push_back(p->pid());
      return absl::DeadlineExceededError(absl::StrCat("no process of ", absl::StrJoin(pids, ", "),
                                                      " stopped or exited within ", timeout.count(),
                                                      " ms"));
    }
    // Without an eventfd for every process, the loop re-checks every few milliseconds instead.
    PollFor(fds, remaining, /*bounded=*/fds.size() < processes.size());
  }
}

bool ChildProcess::running() {
  if (reaped_) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    wait_status_ = status;
  } else if (r < 0 && errno == ECHILD) {
    reaped_ = true;  // reaped elsewhere (SIGCHLD ignored): gone, how is unknown
    wait_status_ = 0;
  }
  return !reaped_;
}

std::string ChildProcess::ExitDescription() const {
  if (!reaped_) return "running";
  if (WIFEXITED(wait_status_)) return absl::StrCat("exited with code ", WEXITSTATUS(wait_status_));
  if (WIFSIGNALED(wait_status_)) {
    const int sig = WTERMSIG(wait_status_);
    return absl::StrCat("was killed by signal ", sig, " (", strsignal(sig), ")");
  }
  return "ended";
}

std::string ChildProcess::LogTail(size_t bytes) const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string all = ss.str();
  return all.size() > bytes ? all.substr(all.size() - bytes) : all;
}

absl::StatusOr<int> WaitForPortFile(const std::string& path, ChildProcess& process,
                                    std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  const std::string dir = parent.empty() ? "." : parent.string();
  // rpc::Server renames its port file into place (IN_MOVED_TO); a plain write ends with
  // IN_CLOSE_WRITE.
  ScopedFd inotify(inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (inotify.get() >= 0 &&
      inotify_add_watch(inotify.get(), dir.c_str(), IN_CLOSE_WRITE | IN_MOVED_TO) < 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return absl::NotFoundError(
          absl::StrCat("cannot wait for port file ", path, ": no directory ", dir));
    }
    inotify.reset();
  }
  std::vector<pollfd> fds;
  if (inotify.get() >= 0) fds.push_back({.fd = inotify.get(), .events = POLLIN, .revents = 0});
  if (process.pidfd() >= 0) fds.push_back({.fd = process.pidfd(), .events = POLLIN, .revents = 0});
  // Without both event sources (no inotify instance left, a kernel before 5.3) the loop
  // re-checks every few milliseconds instead.
  const bool bounded = fds.size() < 2;
  // The watch is in place before the first look, so a file written after the look still wakes
  // the poll.
  while (true) {
    if (std::optional<int> port = ReadPort(path)) return *port;
    if (!process.running()) {
      return absl::UnavailableError(absl::StrCat("process ", process.pid(), " ",
                                                 process.ExitDescription(),
                                                 " before writing its port file ", path));
    }
    const int remaining = MillisecondsUntil(deadline);
    if (remaining == 0) {
      return absl::DeadlineExceededError(absl::StrCat("no port in ", path, " after ",
                                                      timeout.count(), " ms; process ",
                                                      process.pid(), " is still running"));
    }
    PollFor(fds, remaining, bounded);
    if (inotify.get() >= 0) DrainEvents(inotify.get());
  }
}

std::string BinaryPath(const std::string& name) {
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
  return (self.parent_path() / name).string();
}

}  // namespace pdserve::rpc
