// A "something changed" callback that one side sets and clears while other threads notify.
#pragma once

#include <functional>
#include <utility>

#include "absl/synchronization/mutex.h"

namespace pdserve {

// Thread-safety: all methods from any thread. Notify runs the callback under an internal lock, so
// once Set(nullptr) returns no call of the old callback is running or will run; the callback
// must be quick and must not call Set.
class ChangeNotifier {
 public:
  void Set(std::function<void()> callback) {
    absl::MutexLock lock(&mu_);
    callback_ = std::move(callback);
  }
  void Notify() {
    absl::MutexLock lock(&mu_);
    if (callback_) callback_();
  }

 private:
  absl::Mutex mu_;
  std::function<void()> callback_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pdserve
