// POSIX socket helpers shared by the KV receiver and sender (internal to transport/): blocking
// ones for the sender's per-connection threads, non-blocking ones for the receiver's event loop.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "transport/kv_frame.h"

namespace pdserve::net {

// Socket buffers asked for on both sides: a whole frame of a few MiB in flight keeps loopback
// and LAN links busy between syscalls (the kernel caps it at net.core.{r,w}mem_max).
inline constexpr int kSocketBufferBytes = 8 << 20;

struct Endpoint {
  std::string host;
  int port = 0;
  std::string ToString() const;
};

// "host:port" or "[ipv6]:port" with port in [0, 65535].
absl::StatusOr<Endpoint> ParseEndpoint(std::string_view endpoint);

// An owned file descriptor (closed on destruction). Thread-safety: like an int.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Close(); }
  Fd(Fd&& other) noexcept : fd_(other.Release()) {}
  Fd& operator=(Fd&& other) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release();
  void Close();

 private:
  int fd_ = -1;
};

// A listening TCP socket on host:port (port 0: an ephemeral one; SO_REUSEADDR so a restarted
// receiver can take its port back). Returns the socket and the bound port.
absl::StatusOr<std::pair<Fd, int>> Listen(const Endpoint& endpoint, int backlog = 64);
// A connected TCP socket with TCP_NODELAY and large buffers; gives up after `timeout`.
absl::StatusOr<Fd> Connect(const Endpoint& endpoint, std::chrono::milliseconds timeout);
// TCP_NODELAY (frames and acks must not wait for Nagle), kSocketBufferBytes buffers and
// keepalive probes.
void TuneSocket(int fd);

// Reads exactly `size` bytes. UNAVAILABLE when the peer closes or on a socket error;
// `*clean_eof` (if given) is set when the peer closed before the first byte.
absl::Status ReadFull(int fd, void* data, size_t size, bool* clean_eof = nullptr);
// Writes all of `iov` (any number of entries; modified as it goes). UNAVAILABLE on error.
// Never raises SIGPIPE.
absl::Status WriteAll(int fd, std::vector<iovec>& iov);
absl::Status WriteFull(int fd, const void* data, size_t size);
// Reads `spans`' total size straight into them, feeding every byte read to `hasher` right
// after it lands (while it is still in cache).
absl::Status ReadIntoSpans(int fd, std::span<const std::span<std::byte>> spans,
                           PayloadHasher& hasher);
// Reads and drops `bytes` bytes (a rejected frame's payload).
absl::Status Discard(int fd, uint64_t bytes);

// Non-blocking I/O, for an event loop. Each helper makes one system call (MSG_DONTWAIT, so the
// descriptor's own mode does not matter) and retries only on EINTR.

// Sets O_NONBLOCK (a listener the event loop accepts from until EAGAIN).
absl::Status SetNonBlocking(int fd);

// What one non-blocking call did: moved `bytes` (0: nothing to read, or no room to write, right
// now), or found that the peer closed its side (reads), or failed.
struct IoResult {
  size_t bytes = 0;
  bool peer_closed = false;
  absl::Status error;  // UNAVAILABLE on a socket error; never for EAGAIN
  bool ok() const { return !peer_closed && error.ok(); }
};
IoResult ReadSome(int fd, void* data, size_t size);
// Never raises SIGPIPE.
IoResult WriteSome(int fd, const void* data, size_t size);

// A read position inside a list of spans: spans[index], offset bytes in.
struct SpanCursor {
  size_t index = 0;
  size_t offset = 0;
};
// Reads up to `max_bytes` (at most one chunk of a few hundred KiB) into `spans` from `at` on,
// feeds the bytes to `hasher` right after they land and advances `at` over them.
IoResult ReadSomeIntoSpans(int fd, std::span<const std::span<std::byte>> spans, SpanCursor& at,
                           size_t max_bytes, PayloadHasher& hasher);
// Feeds the `bytes` that just landed at `at` to `hasher` and moves `at` past them (and past any
// empty spans that follow).
void AdvanceSpanCursor(std::span<const std::span<std::byte>> spans, SpanCursor& at, size_t bytes,
                       PayloadHasher& hasher);

// "ip:port" of the socket's peer, for logs ("?" when unknown).
std::string PeerName(int fd);

// "connection to X: what (errno text)"-style UNAVAILABLE status for a failed syscall.
absl::Status ErrnoStatus(absl::string_view what, int err);

}  // namespace pdserve::net
