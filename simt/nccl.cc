// The NCCL calls the NCCL payload link makes (transport/nccl_kv_link.cc), served inside one
// process for the emulated tests, with NCCL's rules where the link relies on them: ranks meet by
// unique id (a non-blocking setup is in progress until both joined); each ncclSend pairs with the
// peer's next ncclRecv, which must name the same count; a communicator aborted while an operation
// waits ends that operation with an error, and leaves its peer waiting (only the peer's own abort,
// its deadline, ends it there). Like the emulated streams, an operation runs when it is issued:
// a send or receive waits in the call for its peer's matching one, where a real one would wait on
// its stream.
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace emulated_nccl {
struct Pair;
}  // namespace emulated_nccl

// Kept by the registry until the process ends.
struct ncclComm {
  std::shared_ptr<emulated_nccl::Pair> pair;
  int rank = 0;
  bool aborted = false;  // under pair->mu
};

namespace emulated_nccl {

struct PendingSend {
  const void* data;
  size_t bytes;
  bool done = false;
  bool count_mismatch = false;
};

// The two ranks of one communicator.
struct Pair {
  std::mutex mu;
  std::condition_variable cv;
  int joined = 0;
  std::deque<PendingSend*> to[2];  // to[r]: sends waiting for rank r's receive
};

struct Registry {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<Pair>> pairs;  // by unique id
  // Every communicator made: an aborted one stays valid for a call another thread is still in.
  std::vector<std::unique_ptr<ncclComm>> comms;
  uint64_t next_id = 1;
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: communicators may outlive main
  return *r;
}

}  // namespace emulated_nccl

using emulated_nccl::Pair;
using emulated_nccl::PendingSend;
using emulated_nccl::registry;

extern "C" {

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclInvalidArgument:
      return "invalid argument (emulated NCCL)";
    case ncclInvalidUsage:
      return "invalid usage: send and receive counts differ (emulated NCCL)";
    case ncclSystemError:
      return "the communicator was aborted (emulated NCCL)";
    case ncclInProgress:
      return "operation in progress";
    default:
      return "error (emulated NCCL)";
  }
}

// Its errors are all told by ncclGetErrorString.
const char* ncclGetLastError(ncclComm_t) { return ""; }

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id->internal, 0, sizeof(id->internal));
  std::lock_guard<std::mutex> lock(registry().mu);
  std::snprintf(id->internal, sizeof(id->internal), "emulated-nccl-%llu",
                static_cast<unsigned long long>(registry().next_id++));
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t* config) {
  if (nranks != 2 || rank < 0 || rank > 1) return ncclInvalidArgument;  // pairs only
  std::shared_ptr<Pair> pair;
  {
    std::lock_guard<std::mutex> lock(registry().mu);
    std::shared_ptr<Pair>& p = registry().pairs[std::string(id.internal, sizeof(id.internal))];
    if (p == nullptr) p = std::make_shared<Pair>();
    pair = p;
    *comm = registry().comms.emplace_back(new ncclComm{pair, rank, false}).get();
  }
  std::unique_lock<std::mutex> lock(pair->mu);
  ++pair->joined;
  pair->cv.notify_all();
  if (pair->joined >= 2) return ncclSuccess;
  if (config != nullptr && config->blocking == 0) return ncclInProgress;
  pair->cv.wait(lock, [&] { return pair->joined >= 2 || (*comm)->aborted; });
  return (*comm)->aborted ? ncclSystemError : ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  std::lock_guard<std::mutex> lock(comm->pair->mu);
  *async_error = comm->aborted            ? ncclSystemError
                 : comm->pair->joined < 2 ? ncclInProgress
                                          : ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t) {
  if ((datatype != ncclUint8 && datatype != ncclInt8) || peer != 1 - comm->rank) {
    return ncclInvalidArgument;
  }
  Pair& p = *comm->pair;
  PendingSend send{sendbuff, count};
  std::unique_lock<std::mutex> lock(p.mu);
  if (comm->aborted) return ncclSystemError;
  p.to[peer].push_back(&send);
  p.cv.notify_all();
  p.cv.wait(lock, [&] { return send.done || comm->aborted; });
  if (!send.done) {  // aborted first: no receive may read it any more
    std::erase(p.to[peer], &send);
    return ncclSystemError;
  }
  return send.count_mismatch ? ncclInvalidUsage : ncclSuccess;
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t) {
  if ((datatype != ncclUint8 && datatype != ncclInt8) || peer != 1 - comm->rank) {
    return ncclInvalidArgument;
  }
  Pair& p = *comm->pair;
  std::deque<PendingSend*>& sends = p.to[comm->rank];
  std::unique_lock<std::mutex> lock(p.mu);
  p.cv.wait(lock, [&] { return !sends.empty() || comm->aborted; });
  if (comm->aborted) return ncclSystemError;
  PendingSend* send = sends.front();
  sends.pop_front();
  send->count_mismatch = send->bytes != count;
  if (!send->count_mismatch) std::memcpy(recvbuff, send->data, count);
  send->done = true;  // the sender leaves once the lock is released: after the copy
  p.cv.notify_all();
  return send->count_mismatch ? ncclInvalidUsage : ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  std::lock_guard<std::mutex> lock(comm->pair->mu);
  comm->aborted = true;
  comm->pair->cv.notify_all();
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) { return ncclCommAbort(comm); }

}  // extern "C"
