// Fault injection for the multi-process fault tests. A worker started with
// PDSERVE_STOP_AT=<point> or <point>@<index> in its environment stops itself (SIGSTOP, every
// thread at once) the first time it reaches that point (with that index), so a test that waits
// for the stop (waitpid with WUNTRACED) can kill it exactly there with SIGKILL. The points:
//   decode.reserved       a reservation was made; its Reserve answer not yet sent
//   decode.frame_stored   layer <index>'s frame was written into a reservation; no ack sent yet
//   prefill.layer_queued  layer <index>'s KV was queued on the transport
// Without the variable a call costs one branch on a value read once.
#pragma once

#include <cstdint>

#include "absl/strings/string_view.h"

namespace pdserve::serving {

void StopHereIfAsked(absl::string_view point, int64_t index = -1);

}  // namespace pdserve::serving
