#include "transport/device_kv_links.h"

#include <string>

#include "absl/strings/str_cat.h"
#if PDSERVE_WITH_CUDA
#include "transport/cuda_ipc_kv_link.h"
#endif
#if PDSERVE_WITH_NCCL
#include "transport/nccl_kv_link.h"
#endif

namespace pdserve {

std::vector<KvTransportKind> DeviceKvLinks() {
  std::vector<KvTransportKind> kinds;
#if PDSERVE_WITH_CUDA
  kinds.push_back(KvTransportKind::kCudaIpc);
#endif
#if PDSERVE_WITH_NCCL
  kinds.push_back(KvTransportKind::kNccl);
#endif
  return kinds;
}

absl::StatusOr<std::shared_ptr<KvLinkFactory>> MakeKvLinkFactory(KvTransportKind kind,
                                                                 [[maybe_unused]] int ordinal) {
  switch (kind) {
    case KvTransportKind::kTcp:
      return std::shared_ptr<KvLinkFactory>(nullptr);
#if PDSERVE_WITH_CUDA
    case KvTransportKind::kCudaIpc:
      return std::make_shared<CudaIpcLinkFactory>(ordinal);
#endif
#if PDSERVE_WITH_NCCL
    case KvTransportKind::kNccl:
      return std::make_shared<NcclLinkFactory>(ordinal);
#endif
    default:
      return absl::FailedPreconditionError(
          absl::StrCat("this build has no ", std::string(KvTransportName(kind)), " payload link"));
  }
}

absl::StatusOr<std::vector<std::pair<KvTransportKind, std::shared_ptr<KvLinkFactory>>>>
MakeKvLinkFactories(std::span<const KvTransportKind> kinds, int ordinal) {
  std::vector<std::pair<KvTransportKind, std::shared_ptr<KvLinkFactory>>> links;
  for (KvTransportKind kind : kinds) {
    absl::StatusOr<std::shared_ptr<KvLinkFactory>> link = MakeKvLinkFactory(kind, ordinal);
    if (!link.ok()) return link.status();
    links.emplace_back(kind, *std::move(link));
  }
  return links;
}

}  // namespace pdserve
