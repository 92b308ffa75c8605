#include "transport/nccl_kv_link.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "transport/gpu_link_util.h"
#include "transport/kv_link_worker.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;

// How often a wait for a non-blocking NCCL call asks whether it is done (NCCL has no callback).
constexpr auto kProgressCheck = std::chrono::milliseconds(1);

// With NCCL's last error, which says what its code does not ("Duplicate GPU detected: ...").
absl::Status NcclStatus(const char* what, ncclResult_t r) {
  const std::string detail = ncclGetLastError(nullptr);
  return absl::UnavailableError(absl::StrCat("NCCL ", what, ": ", ncclGetErrorString(r),
                                             detail.empty() ? "" : " (" + detail + ")"));
}

// Waits out a non-blocking NCCL call's `r`: until it is no longer in progress, or `deadline`
// passes or `stop` is set (then ncclInProgress).
ncclResult_t Settle(ncclComm_t comm, ncclResult_t r, Clock::time_point deadline,
                    const std::atomic<bool>& stop) {
  while (r == ncclInProgress) {
    if (stop.load() || Clock::now() >= deadline) return ncclInProgress;
    std::this_thread::sleep_for(kProgressCheck);
    if (ncclResult_t asked = ncclCommGetAsyncError(comm, &r); asked != ncclSuccess) return asked;
  }
  return r;
}

// Joins the 2-rank communicator `id` as `rank`, by `deadline` unless `stop` is set first.
absl::StatusOr<ncclComm_t> InitComm(int device, const ncclUniqueId& id, int rank,
                                    Clock::time_point deadline, const std::atomic<bool>& stop) {
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    return CudaStatus("cudaSetDevice", e);
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  const ncclResult_t r =
      Settle(comm, ncclCommInitRankConfig(&comm, 2, id, rank, &config), deadline, stop);
  if (r == ncclSuccess) return comm;
  if (comm != nullptr) (void)ncclCommAbort(comm);
  if (r != ncclInProgress) return NcclStatus("ncclCommInitRankConfig", r);
  if (stop.load()) return absl::CancelledError("the NCCL link's setup was cancelled");
  return absl::DeadlineExceededError("the peer did not join the NCCL communicator in time");
}

// One end of a link: the communicator, a stream and a staging buffer in GPU memory.
// Thread-safety: one operation at a time; Abort from any thread.
class NcclLink {
 public:
  static absl::StatusOr<std::unique_ptr<NcclLink>> Create(int device, ncclComm_t comm, int peer) {
    absl::StatusOr<cudaStream_t> stream = NewLinkStream(device);
    if (!stream.ok()) {
      (void)ncclCommAbort(comm);
      return stream.status();
    }
    return std::unique_ptr<NcclLink>(new NcclLink(device, comm, peer, *stream));
  }
  ~NcclLink() {
    Abort();  // frees the communicator; the link is idle or failed by now
    if (staging_ != nullptr) (void)cudaFree(staging_);
    (void)cudaStreamDestroy(stream_);
  }

  absl::Status Send(std::span<const std::span<const std::byte>> payload) {
    uint64_t bytes = 0;
    for (const auto& s : payload) bytes += s.size();
    const void* from = payload.size() == 1 ? payload[0].data() : nullptr;
    if (from == nullptr) {  // gathered into the staging buffer first, on the same stream
      if (absl::Status s = Stage(bytes); !s.ok()) return s;
      if (cudaError_t e = CopyPayloadAsync(payload, 0, bytes, staging_, stream_);
          e != cudaSuccess) {
        return CudaStatus("cudaMemcpyAsync", e);
      }
      from = staging_;
    }
    return Run("ncclSend", [&] { return ncclSend(from, bytes, ncclUint8, peer_, comm_, stream_); });
  }

  absl::Status Receive(std::span<const std::span<std::byte>> into) {
    uint64_t bytes = 0;
    for (const auto& s : into) bytes += s.size();
    if (into.size() == 1) {
      return Run("ncclRecv",
                 [&] { return ncclRecv(into[0].data(), bytes, ncclUint8, peer_, comm_, stream_); });
    }
    if (absl::Status s = Stage(bytes); !s.ok()) return s;
    if (absl::Status s =
            Run("ncclRecv",
                [&] { return ncclRecv(staging_, bytes, ncclUint8, peer_, comm_, stream_); });
        !s.ok()) {
      return s;
    }
    if (cudaError_t e = CopyPayloadAsync(into, 0, bytes, staging_, stream_); e != cudaSuccess) {
      return CudaStatus("cudaMemcpyAsync", e);  // scattered into the spans
    }
    if (cudaError_t e = cudaStreamSynchronize(stream_); e != cudaSuccess) {
      return CudaStatus("cudaStreamSynchronize", e);
    }
    return absl::OkStatus();
  }

  absl::Status Discard(uint64_t bytes) {
    if (absl::Status s = Stage(bytes); !s.ok()) return s;
    return Run("ncclRecv",
               [&] { return ncclRecv(staging_, bytes, ncclUint8, peer_, comm_, stream_); });
  }

  // Ends the communicator (and with it an operation that waits for a peer that died or
  // stalled). NCCL allows it from another thread while an operation is under way.
  void Abort() {
    if (!aborted_.exchange(true)) (void)ncclCommAbort(comm_);
  }

 private:
  NcclLink(int device, ncclComm_t comm, int peer, cudaStream_t stream)
      : device_(device), comm_(comm), peer_(peer), stream_(stream) {}

  // Issues one NCCL operation on the stream and waits until it completed.
  template <typename Call>
  absl::Status Run(const char* what, Call call) {
    const absl::Status aborted = absl::UnavailableError("the NCCL link was aborted");
    if (aborted_.load()) return aborted;
    if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
      return CudaStatus("cudaSetDevice", e);
    }
    const ncclResult_t r = Settle(comm_, call(), Clock::time_point::max(), aborted_);
    if (aborted_.load()) return aborted;
    if (r != ncclSuccess) return NcclStatus(what, r);
    const cudaError_t e = cudaStreamSynchronize(stream_);  // Abort ends a transfer that hangs
    if (aborted_.load()) return aborted;
    if (e != cudaSuccess) return CudaStatus("cudaStreamSynchronize", e);
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(comm_, &async) != ncclSuccess || async != ncclSuccess) {
      return NcclStatus(what, async);
    }
    return absl::OkStatus();
  }

  // A staging buffer of at least `bytes` (grown between operations, never during one).
  absl::Status Stage(uint64_t bytes) {
    if (bytes <= staging_bytes_) return absl::OkStatus();
    if (staging_ != nullptr) (void)cudaFree(staging_);
    staging_ = nullptr;
    staging_bytes_ = 0;
    void* p = nullptr;
    if (cudaError_t e = cudaMalloc(&p, bytes); e != cudaSuccess) {
      return CudaStatus("cudaMalloc (NCCL link staging)", e);
    }
    staging_ = static_cast<std::byte*>(p);
    staging_bytes_ = bytes;
    return absl::OkStatus();
  }

  const int device_;
  const ncclComm_t comm_;
  const int peer_;
  const cudaStream_t stream_;
  std::byte* staging_ = nullptr;
  uint64_t staging_bytes_ = 0;
  std::atomic<bool> aborted_{false};
};

class NcclLinkSender final : public KvLinkSender {
 public:
  explicit NcclLinkSender(std::unique_ptr<NcclLink> link) : link_(std::move(link)) {}
  absl::Status Send(std::span<const std::span<const std::byte>> payload) override {
    return link_->Send(payload);
  }
  void Abort() override { link_->Abort(); }

 private:
  const std::unique_ptr<NcclLink> link_;
};

class NcclLinkReceiver final : public KvLinkReceiver {
 public:
  explicit NcclLinkReceiver(std::unique_ptr<NcclLink> link)
      : link_(std::move(link)), worker_([this] { link_->Abort(); }) {}
  void Receive(std::span<const std::span<std::byte>> into, Done done) override {
    worker_.Post([this, spans = std::vector<std::span<std::byte>>(
                            into.begin(), into.end())] { return link_->Receive(spans); },
                 std::move(done));
  }
  void Discard(uint64_t bytes, Done done) override {
    worker_.Post([this, bytes] { return link_->Discard(bytes); }, std::move(done));
  }
  void Abort() override { worker_.Abort(); }

 private:
  const std::unique_ptr<NcclLink> link_;
  KvLinkWorker worker_;  // after link_: its thread stops first
};

class NcclOffer final : public KvLinkOffer {
 public:
  NcclOffer(int device, const ncclUniqueId& id) : device_(device), id_(id) {}
  std::string setup() const override { return std::string(id_.internal, sizeof(id_.internal)); }
  absl::StatusOr<std::unique_ptr<KvLinkSender>> Connect(Clock::time_point deadline) override {
    absl::StatusOr<ncclComm_t> comm = InitComm(device_, id_, /*rank=*/0, deadline, cancelled_);
    if (!comm.ok()) return comm.status();
    absl::StatusOr<std::unique_ptr<NcclLink>> link = NcclLink::Create(device_, *comm, /*peer=*/1);
    if (!link.ok()) return link.status();
    return std::unique_ptr<KvLinkSender>(new NcclLinkSender(*std::move(link)));
  }
  void Cancel() override { cancelled_ = true; }

 private:
  const int device_;
  const ncclUniqueId id_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace

NcclLinkFactory::~NcclLinkFactory() {
  Joining& j = *joining_;
  absl::MutexLock lock(&j.mu);
  j.mu.Await(absl::Condition(
      +[](Joining* state) ABSL_NO_THREAD_SAFETY_ANALYSIS { return state->count == 0; }, &j));
}

absl::StatusOr<std::unique_ptr<KvLinkOffer>> NcclLinkFactory::Offer() {
  ncclUniqueId id;
  if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
    return NcclStatus("ncclGetUniqueId", r);
  }
  return std::unique_ptr<KvLinkOffer>(new NcclOffer(device_, id));
}

void NcclLinkFactory::Join(std::string setup, Clock::time_point deadline, Joined joined) {
  ncclUniqueId id;
  if (setup.size() != sizeof(id.internal)) {
    joined(absl::InvalidArgumentError(absl::StrCat("an NCCL link hello carries a ",
                                                   sizeof(id.internal), "-byte ncclUniqueId, not ",
                                                   setup.size(), " bytes")));
    return;
  }
  std::memcpy(id.internal, setup.data(), sizeof(id.internal));
  {
    absl::MutexLock lock(&joining_->mu);
    ++joining_->count;
  }
  // Joining blocks until the sender's Connect joins too: on a thread of its own.
  std::thread([device = device_, joining = joining_, id, deadline, joined = std::move(joined)] {
    static const std::atomic<bool> kNever{false};
    absl::StatusOr<std::unique_ptr<KvLinkReceiver>> result;
    absl::StatusOr<ncclComm_t> comm = InitComm(device, id, /*rank=*/1, deadline, kNever);
    if (!comm.ok()) {
      result = comm.status();
    } else if (absl::StatusOr<std::unique_ptr<NcclLink>> link =
                   NcclLink::Create(device, *comm, /*peer=*/0);
               !link.ok()) {
      result = link.status();
    } else {
      result = std::unique_ptr<KvLinkReceiver>(new NcclLinkReceiver(*std::move(link)));
    }
    joined(std::move(result));
    absl::MutexLock lock(&joining->mu);
    --joining->count;
  }).detach();
}

}  // namespace pdserve
