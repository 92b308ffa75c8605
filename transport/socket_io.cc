#include "transport/socket_io.h"

#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"

namespace pdserve::net {
namespace {

// Payload reads land in chunks this big so the checksum reads each chunk while it is still in
// the L2 cache the kernel copy just filled.
constexpr size_t kReadChunkBytes = 256 << 10;

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

absl::StatusOr<AddrInfoPtr> Resolve(const Endpoint& endpoint, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* result = nullptr;
  const std::string port = std::to_string(endpoint.port);
  const char* host = endpoint.host.empty() ? nullptr : endpoint.host.c_str();
  if (int rc = getaddrinfo(host, port.c_str(), &hints, &result); rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", endpoint.ToString(), ": ",
                                               gai_strerror(rc),
                                               "; check the host name of the endpoint"));
  }
  return AddrInfoPtr(result);
}

// Waits until `fd` is writable (a non-blocking connect finished) or `timeout` passes.
absl::Status WaitConnected(int fd, const Endpoint& endpoint, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLOUT, 0};
  int rc;
  do {
    rc = poll(&p, 1, static_cast<int>(timeout.count()));
  } while (rc < 0 && errno == EINTR);
  if (rc == 0) {
    return absl::DeadlineExceededError(
        absl::StrCat("connecting to ", endpoint.ToString(), " timed out after ", timeout.count(),
                     " ms; is the KV receiver running and reachable?"));
  }
  int err = 0;
  socklen_t len = sizeof(err);
  if (rc < 0)
    err = errno;
  else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
    err = errno;
  if (err != 0) return ErrnoStatus(absl::StrCat("connecting to ", endpoint.ToString()), err);
  return absl::OkStatus();
}

}  // namespace

std::string Endpoint::ToString() const {
  if (host.find(':') != std::string::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<Endpoint> ParseEndpoint(std::string_view endpoint) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad KV endpoint \"", absl::string_view(endpoint.data(), endpoint.size()),
                     "\": ", why, "; expected host:port or [ipv6]:port"));
  };
  const size_t colon = endpoint.rfind(':');
  if (colon == std::string_view::npos) return bad("no port");
  std::string_view host = endpoint.substr(0, colon);
  const std::string_view port = endpoint.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) return bad("empty host");
  int value = -1;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || value < 0 || value > 65535) {
    return bad("port is not a number in [0, 65535]");
  }
  return Endpoint{std::string(host), value};
}

Fd& Fd::operator=(Fd&& other) noexcept {
  if (this != &other) {
    Close();
    fd_ = other.Release();
  }
  return *this;
}

int Fd::Release() {
  const int fd = fd_;
  fd_ = -1;
  return fd;
}

void Fd::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

absl::Status ErrnoStatus(absl::string_view what, int err) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(err)));
}

std::string PeerName(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof(host), port, sizeof(port),
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "?";
  }
  return Endpoint{host, std::atoi(port)}.ToString();
}

void TuneSocket(int fd) {
  const int one = 1, buf = kSocketBufferBytes;
  // Best effort: a kernel that refuses still moves bytes, only slower.
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
  // Connections idle between requests for long stretches: keepalive probes notice a peer host
  // that vanished (a process that dies is noticed at once: its kernel closes the socket) within
  // about 30 s, which ends that connection instead of leaving it waiting for good.
  const int idle_s = 15, interval_s = 5, probes = 3;
  (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s));
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
}

absl::StatusOr<std::pair<Fd, int>> Listen(const Endpoint& endpoint, int backlog) {
  absl::StatusOr<AddrInfoPtr> ai = Resolve(endpoint, /*passive=*/true);
  if (!ai.ok()) return ai.status();
  absl::Status last = absl::UnavailableError("no address");
  for (addrinfo* a = ai->get(); a != nullptr; a = a->ai_next) {
    Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!fd.valid()) {
      last = ErrnoStatus("socket", errno);
      continue;
    }
    const int one = 1;
    (void)setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    // Accepted sockets inherit the receive buffer, which must be set before listen() for the
    // TCP window scale to use it.
    TuneSocket(fd.get());
    if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd.get(), backlog) != 0) {
      last = ErrnoStatus(absl::StrCat("listening on ", endpoint.ToString(),
                                      " (is the port in use? pick another or 0)"),
                         errno);
      continue;
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof(bound);
    if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
      return ErrnoStatus("getsockname", errno);
    }
    const int port = bound.ss_family == AF_INET6
                         ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                         : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    return std::make_pair(std::move(fd), port);
  }
  return last;
}

absl::StatusOr<Fd> Connect(const Endpoint& endpoint, std::chrono::milliseconds timeout) {
  absl::StatusOr<AddrInfoPtr> ai = Resolve(endpoint, /*passive=*/false);
  if (!ai.ok()) return ai.status();
  absl::Status last = absl::UnavailableError("no address");
  for (addrinfo* a = ai->get(); a != nullptr; a = a->ai_next) {
    Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    if (!fd.valid()) {
      last = ErrnoStatus("socket", errno);
      continue;
    }
    TuneSocket(fd.get());
    if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last = ErrnoStatus(
            absl::StrCat("connecting to ", endpoint.ToString(), " (is the KV receiver running?)"),
            errno);
        continue;
      }
      if (absl::Status s = WaitConnected(fd.get(), endpoint, timeout); !s.ok()) {
        last = s;
        continue;
      }
    }
    // Back to blocking: each connection has its own reader and writer threads.
    const int flags = fcntl(fd.get(), F_GETFL);
    if (flags < 0 || fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
      return ErrnoStatus("fcntl", errno);
    }
    return fd;
  }
  return last;
}

absl::Status ReadFull(int fd, void* data, size_t size, bool* clean_eof) {
  if (clean_eof != nullptr) *clean_eof = false;
  auto* p = static_cast<uint8_t*>(data);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::recv(fd, p + done, size - done, MSG_WAITALL);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) {
      if (done == 0 && clean_eof != nullptr) *clean_eof = true;
      return absl::UnavailableError(
          absl::StrCat("peer closed the connection after ", done, " of ", size, " bytes"));
    }
    return ErrnoStatus("recv", errno);
  }
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, std::vector<iovec>& iov) {
  size_t first = 0;
  while (first < iov.size()) {
    msghdr msg{};
    msg.msg_iov = iov.data() + first;
    msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("send", errno);
    }
    // Skip the entries written in full, trim the partly written one.
    auto left = static_cast<size_t>(n);
    while (first < iov.size() && left >= iov[first].iov_len) {
      left -= iov[first].iov_len;
      ++first;
    }
    if (left > 0) {
      iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
  return absl::OkStatus();
}

absl::Status WriteFull(int fd, const void* data, size_t size) {
  std::vector<iovec> iov{{const_cast<void*>(data), size}};
  return WriteAll(fd, iov);
}

absl::Status ReadIntoSpans(int fd, std::span<const std::span<std::byte>> spans,
                           PayloadHasher& hasher) {
  size_t index = 0, offset = 0;  // read position: spans[index], offset bytes in
  std::array<iovec, 64> iov;
  while (index < spans.size()) {
    // Up to kReadChunkBytes from the read position on.
    size_t n_iov = 0, want = 0;
    for (size_t i = index, off = offset;
         i < spans.size() && n_iov < iov.size() && want < kReadChunkBytes; ++i, off = 0) {
      const size_t take = std::min(spans[i].size() - off, kReadChunkBytes - want);
      if (take == 0) continue;
      iov[n_iov++] = {spans[i].data() + off, take};
      want += take;
    }
    if (n_iov == 0) break;  // only empty spans left
    msghdr msg{};
    msg.msg_iov = iov.data();
    msg.msg_iovlen = n_iov;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_WAITALL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("recv", errno);
    if (n == 0) return absl::UnavailableError("peer closed the connection inside a frame payload");
    // Hash what landed, and advance the read position over it.
    auto left = static_cast<size_t>(n);
    while (left > 0) {
      const size_t take = std::min(spans[index].size() - offset, left);
      hasher.Update(spans[index].data() + offset, take);
      left -= take;
      offset += take;
      if (offset == spans[index].size()) {
        ++index;
        offset = 0;
      }
    }
    while (index < spans.size() && spans[index].size() == offset) {
      ++index;
      offset = 0;
    }
  }
  return absl::OkStatus();
}

absl::Status Discard(int fd, uint64_t bytes) {
  std::array<uint8_t, 64 << 10> scratch;
  while (bytes > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(bytes, scratch.size()));
    if (absl::Status s = ReadFull(fd, scratch.data(), n); !s.ok()) return s;
    bytes -= n;
  }
  return absl::OkStatus();
}

absl::Status SetNonBlocking(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return ErrnoStatus("fcntl", errno);
  return absl::OkStatus();
}

namespace {

// The IoResult of a recv/send that returned `n`.
IoResult Outcome(ssize_t n, int err, const char* what) {
  IoResult r;
  if (n > 0) {
    r.bytes = static_cast<size_t>(n);
  } else if (n == 0) {
    r.peer_closed = true;
  } else if (err != EAGAIN && err != EWOULDBLOCK) {
    r.error = ErrnoStatus(what, err);
  }
  return r;
}

}  // namespace

IoResult ReadSome(int fd, void* data, size_t size) {
  ssize_t n;
  do {
    n = ::recv(fd, data, size, MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  return Outcome(n, errno, "recv");
}

IoResult WriteSome(int fd, const void* data, size_t size) {
  ssize_t n;
  do {
    n = ::send(fd, data, size, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  IoResult r = Outcome(n, errno, "send");
  r.peer_closed = false;  // send never returns 0 for a non-empty buffer
  return r;
}

IoResult ReadSomeIntoSpans(int fd, std::span<const std::span<std::byte>> spans, SpanCursor& at,
                           size_t max_bytes, PayloadHasher& hasher) {
  std::array<iovec, 64> iov;
  size_t n_iov = 0, want = 0;
  const size_t limit = std::min(max_bytes, kReadChunkBytes);
  for (size_t i = at.index, off = at.offset; i < spans.size() && n_iov < iov.size() && want < limit;
       ++i, off = 0) {
    const size_t take = std::min(spans[i].size() - off, limit - want);
    if (take == 0) continue;
    iov[n_iov++] = {spans[i].data() + off, take};
    want += take;
  }
  if (n_iov == 0) return IoResult{};  // nothing left to read into
  msghdr msg{};
  msg.msg_iov = iov.data();
  msg.msg_iovlen = n_iov;
  ssize_t n;
  do {
    n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  IoResult r = Outcome(n, errno, "recv");
  AdvanceSpanCursor(spans, at, r.bytes, hasher);
  return r;
}

void AdvanceSpanCursor(std::span<const std::span<std::byte>> spans, SpanCursor& at, size_t bytes,
                       PayloadHasher& hasher) {
  while (bytes > 0) {
    const size_t take = std::min(spans[at.index].size() - at.offset, bytes);
    hasher.Update(spans[at.index].data() + at.offset, take);
    bytes -= take;
    at.offset += take;
    if (at.offset == spans[at.index].size()) {
      ++at.index;
      at.offset = 0;
    }
  }
  while (at.index < spans.size() && spans[at.index].size() == at.offset) {
    ++at.index;
    at.offset = 0;
  }
}

}  // namespace pdserve::net
