#include "rpc/child_process.h"

#include <fcntl.h>
#include <poll.h>
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

#include "absl/strings/str_cat.h"

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

// Reads the pending events of a non-blocking inotify descriptor: they only say "look again".
void DrainEvents(int inotify_fd) {
  alignas(inotify_event) char buffer[4096];
  while (read(inotify_fd, buffer, sizeof(buffer)) > 0) {
  }
}

}  // namespace

ChildProcess::ChildProcess(std::vector<std::string> argv, std::string log_path)
    : log_path_(std::move(log_path)) {
  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
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
    execv(args[0], args.data());
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
