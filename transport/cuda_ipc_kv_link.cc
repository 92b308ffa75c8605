#include "transport/cuda_ipc_kv_link.h"

#include <cuda_runtime.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "transport/gpu_link_util.h"
#include "transport/kv_link_worker.h"
#include "transport/socket_io.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;

// setup = the staging buffer's cudaIpcMemHandle, its size (8 bytes, little-endian), the socket's
// abstract name.
constexpr size_t kHandleBytes = sizeof(cudaIpcMemHandle_t);
constexpr size_t kSetupFixedBytes = kHandleBytes + 8;

// The address of abstract-namespace Unix socket `name` (no file; gone with its last descriptor).
std::pair<sockaddr_un, socklen_t> AbstractAddress(const std::string& name) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const size_t n = std::min(name.size(), sizeof(addr.sun_path) - 1);
  std::memcpy(addr.sun_path + 1, name.data(), n);  // sun_path[0] == 0: abstract
  return {addr, static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n)};
}

std::string UniqueSocketName() {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat("pdserve-kv-ipc-", ::getpid(), "-", counter++, "-", std::random_device{}());
}

// Chunk sizes travel as 8 little-endian bytes: "ready n" one way, "consumed n" the other.
absl::Status WriteToken(int fd, uint64_t n) {
  uint8_t b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(n >> (8 * i));
  absl::Status s = net::WriteFull(fd, b, sizeof(b));
  return s.ok() ? s : absl::UnavailableError(absl::StrCat("CUDA IPC link: ", s.message()));
}

absl::StatusOr<uint64_t> ReadToken(int fd) {
  uint8_t b[8];
  if (absl::Status s = net::ReadFull(fd, b, sizeof(b)); !s.ok()) {
    return absl::UnavailableError(absl::StrCat("CUDA IPC link: ", s.message()));
  }
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{b[i]} << (8 * i);
  return n;
}

// Thread-safety: Send from one thread at a time; Abort from any thread.
class IpcSender final : public KvLinkSender {
 public:
  IpcSender(int device, std::byte* staging, uint64_t capacity, net::Fd socket, cudaStream_t stream)
      : device_(device),
        staging_(staging),
        capacity_(capacity),
        socket_(std::move(socket)),
        stream_(stream) {}
  ~IpcSender() override {
    (void)cudaFree(staging_);
    (void)cudaStreamDestroy(stream_);
  }

  absl::Status Send(std::span<const std::span<const std::byte>> payload) override {
    if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
      return CudaStatus("cudaSetDevice", e);
    }
    uint64_t total = 0;
    for (const auto& s : payload) total += s.size();
    for (uint64_t at = 0; at < total;) {
      if (in_flight_ > 0) {  // the buffer is the receiver's until it says "consumed"
        absl::StatusOr<uint64_t> consumed = ReadToken(socket_.get());
        if (!consumed.ok()) return consumed.status();
        if (*consumed != in_flight_) {
          return absl::InternalError("CUDA IPC link: the receiver consumed another chunk");
        }
        in_flight_ = 0;
      }
      const uint64_t n = std::min(capacity_, total - at);
      if (cudaError_t e = CopyPayloadAsync(payload, at, n, staging_, stream_); e != cudaSuccess) {
        return CudaStatus("cudaMemcpyAsync", e);
      }
      if (cudaError_t e = cudaStreamSynchronize(stream_); e != cudaSuccess) {
        return CudaStatus("cudaStreamSynchronize", e);
      }
      if (absl::Status s = WriteToken(socket_.get(), n); !s.ok()) return s;
      in_flight_ = n;
      at += n;
    }
    return absl::OkStatus();
  }
  void Abort() override { ::shutdown(socket_.get(), SHUT_RDWR); }

 private:
  const int device_;
  std::byte* const staging_;
  const uint64_t capacity_;
  const net::Fd socket_;
  const cudaStream_t stream_;
  uint64_t in_flight_ = 0;  // the chunk the receiver has not consumed yet
};

// Thread-safety: as KvLinkReceiver.
class IpcReceiver final : public KvLinkReceiver {
 public:
  IpcReceiver(int device, const std::byte* staging, uint64_t capacity, net::Fd socket,
              cudaStream_t stream)
      : device_(device),
        staging_(staging),
        capacity_(capacity),
        socket_(std::move(socket)),
        stream_(stream),
        worker_([this] { ::shutdown(socket_.get(), SHUT_RDWR); }) {}
  ~IpcReceiver() override {
    worker_.Abort();
    (void)cudaIpcCloseMemHandle(const_cast<std::byte*>(staging_));
    (void)cudaStreamDestroy(stream_);
  }

  void Receive(std::span<const std::span<std::byte>> into, Done done) override {
    uint64_t total = 0;
    for (const auto& s : into) total += s.size();
    worker_.Post(
        [this, total, spans = std::vector<std::span<std::byte>>(into.begin(), into.end())] {
          return Take(spans, total);
        },
        std::move(done));
  }
  void Discard(uint64_t bytes, Done done) override {
    worker_.Post([this, bytes] { return Take({}, bytes); }, std::move(done));
  }
  void Abort() override { worker_.Abort(); }

 private:
  // Takes `total` bytes chunk by chunk, scattering them into `spans` (none: dropped).
  absl::Status Take(std::span<const std::span<std::byte>> spans, uint64_t total) {
    if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
      return CudaStatus("cudaSetDevice", e);
    }
    for (uint64_t at = 0; at < total;) {
      absl::StatusOr<uint64_t> n = ReadToken(socket_.get());
      if (!n.ok()) return n.status();
      if (*n == 0 || *n > capacity_ || *n > total - at) {
        return absl::InternalError(absl::StrCat("CUDA IPC link: a chunk of ", *n, " bytes where ",
                                                total - at, " remain (at most ", capacity_,
                                                " a chunk)"));
      }
      if (!spans.empty()) {
        if (cudaError_t e = CopyPayloadAsync(spans, at, *n, staging_, stream_); e != cudaSuccess) {
          return CudaStatus("cudaMemcpyAsync", e);
        }
        if (cudaError_t e = cudaStreamSynchronize(stream_); e != cudaSuccess) {
          return CudaStatus("cudaStreamSynchronize", e);
        }
      }
      if (absl::Status s = WriteToken(socket_.get(), *n); !s.ok()) return s;
      at += *n;
    }
    return absl::OkStatus();
  }

  const int device_;
  const std::byte* const staging_;  // the sender's, opened through its IPC handle
  const uint64_t capacity_;
  const net::Fd socket_;
  const cudaStream_t stream_;
  KvLinkWorker worker_;  // last: its thread stops before the members above go
};

class IpcOffer final : public KvLinkOffer {
 public:
  static absl::StatusOr<std::unique_ptr<IpcOffer>> Create(int device, uint64_t capacity) {
    if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
      return CudaStatus("cudaSetDevice", e);
    }
    std::unique_ptr<IpcOffer> offer(new IpcOffer(device, capacity));
    void* staging = nullptr;
    if (cudaError_t e = cudaMalloc(&staging, capacity); e != cudaSuccess) {
      return CudaStatus("cudaMalloc (CUDA IPC link staging)", e);
    }
    offer->staging_ = static_cast<std::byte*>(staging);
    if (cudaError_t e = cudaIpcGetMemHandle(&offer->handle_, staging); e != cudaSuccess) {
      return CudaStatus("cudaIpcGetMemHandle", e);
    }
    offer->listener_ = net::Fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    offer->cancel_ = net::Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!offer->listener_.valid() || !offer->cancel_.valid()) {
      return net::ErrnoStatus("CUDA IPC link socket", errno);
    }
    offer->name_ = UniqueSocketName();
    const auto [addr, len] = AbstractAddress(offer->name_);
    if (::bind(offer->listener_.get(), reinterpret_cast<const sockaddr*>(&addr), len) != 0 ||
        ::listen(offer->listener_.get(), 1) != 0) {
      return net::ErrnoStatus("CUDA IPC link socket", errno);
    }
    return offer;
  }
  ~IpcOffer() override {
    if (staging_ != nullptr) (void)cudaFree(staging_);  // not handed to a sender
  }

  std::string setup() const override {
    std::string s(reinterpret_cast<const char*>(&handle_), kHandleBytes);
    for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>(capacity_ >> (8 * i)));
    return s + name_;
  }

  absl::StatusOr<std::unique_ptr<KvLinkSender>> Connect(Clock::time_point deadline) override {
    pollfd fds[2] = {{.fd = listener_.get(), .events = POLLIN, .revents = 0},
                     {.fd = cancel_.get(), .events = POLLIN, .revents = 0}};
    for (;;) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
      const int ready = left.count() > 0 ? ::poll(fds, 2, static_cast<int>(left.count())) : 0;
      if (ready < 0 && errno == EINTR) continue;
      if (ready < 0) return net::ErrnoStatus("poll", errno);
      if (ready == 0)
        return absl::DeadlineExceededError("the receiver did not join the CUDA IPC link");
      if (fds[1].revents != 0) return absl::CancelledError("the CUDA IPC link offer was cancelled");
      break;
    }
    net::Fd socket(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!socket.valid()) return net::ErrnoStatus("accept (CUDA IPC link)", errno);
    absl::StatusOr<cudaStream_t> stream = NewLinkStream(device_);
    if (!stream.ok()) return stream.status();
    return std::unique_ptr<KvLinkSender>(new IpcSender(device_, std::exchange(staging_, nullptr),
                                                       capacity_, std::move(socket), *stream));
  }

  void Cancel() override {
    const uint64_t one = 1;
    (void)!::write(cancel_.get(), &one, sizeof(one));
  }

 private:
  IpcOffer(int device, uint64_t capacity) : device_(device), capacity_(capacity) {}

  const int device_;
  const uint64_t capacity_;
  std::byte* staging_ = nullptr;
  cudaIpcMemHandle_t handle_{};
  std::string name_;
  net::Fd listener_, cancel_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<KvLinkOffer>> CudaIpcLinkFactory::Offer() {
  absl::StatusOr<std::unique_ptr<IpcOffer>> offer = IpcOffer::Create(device_, staging_bytes_);
  if (!offer.ok()) return offer.status();
  return std::unique_ptr<KvLinkOffer>(*std::move(offer));
}

void CudaIpcLinkFactory::Join(std::string setup, Clock::time_point /*deadline*/, Joined joined) {
  if (setup.size() <= kSetupFixedBytes) {
    joined(absl::InvalidArgumentError(absl::StrCat(
        "a CUDA IPC link hello carries an IPC handle, a size and a socket name: ", setup.size(),
        " bytes is too short")));
    return;
  }
  cudaIpcMemHandle_t handle;
  std::memcpy(&handle, setup.data(), kHandleBytes);
  uint64_t capacity = 0;
  for (int i = 0; i < 8; ++i) {
    capacity |= uint64_t{static_cast<uint8_t>(setup[kHandleBytes + i])} << (8 * i);
  }
  net::Fd socket(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const auto [addr, len] = AbstractAddress(setup.substr(kSetupFixedBytes));
  if (!socket.valid() ||
      ::connect(socket.get(), reinterpret_cast<const sockaddr*>(&addr), len) != 0) {
    joined(absl::UnavailableError(absl::StrCat(
        "cannot reach the CUDA IPC link's socket (is the prefill worker on this machine?): ",
        std::strerror(errno))));
    return;
  }
  if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
    joined(CudaStatus("cudaSetDevice", e));
    return;
  }
  void* staging = nullptr;
  if (cudaError_t e = cudaIpcOpenMemHandle(&staging, handle, cudaIpcMemLazyEnablePeerAccess);
      e != cudaSuccess) {
    joined(CudaStatus("cudaIpcOpenMemHandle", e));
    return;
  }
  absl::StatusOr<cudaStream_t> stream = NewLinkStream(device_);
  if (!stream.ok()) {
    (void)cudaIpcCloseMemHandle(staging);
    joined(stream.status());
    return;
  }
  joined(std::unique_ptr<KvLinkReceiver>(new IpcReceiver(
      device_, static_cast<const std::byte*>(staging), capacity, std::move(socket), *stream)));
}

}  // namespace pdserve
