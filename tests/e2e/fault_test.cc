// Faults against real processes: a stalled prefill worker, a client that gives up mid-prefill,
// a long prompt on the default model. Every stream must end (OK or a clear status) within a
// few seconds and every worker must give back its KV blocks.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "tests/default_model.h"
#include "tests/e2e/cluster.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;
using testing_util::Cluster;
using testing_util::MidSizeModel;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

v1::GenerateRequest Request(int prompt_tokens, int salt, int max_tokens) {
  v1::GenerateRequest req;
  for (int i = 0; i < prompt_tokens; ++i) req.add_prompt_token_ids((i * 37 + salt * 11 + 3) % 300);
  req.mutable_sampling()->set_temperature(0.0f);
  req.set_max_tokens(max_tokens);
  req.set_ignore_eos(true);
  return req;
}

grpc::Status Complete(Cluster& cluster, const v1::GenerateRequest& req,
                      std::chrono::milliseconds deadline, v1::CompleteResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  return cluster.router().Complete(&ctx, req, resp);
}

// Waits (bounded) until `condition` holds; the workers' load reports are the events observed.
bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds limit) {
  const auto end = Clock::now() + limit;
  while (Clock::now() < end) {
    if (condition()) return true;
    std::this_thread::yield();
  }
  return condition();
}

TEST(Faults, StalledPrefillWorkerEndsTheStreamWithinFiveSecondsAndFreesTheReservation) {
  Cluster cluster({.model = MidSizeModel("fault_stall", 4096)});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  auto pending = std::async(std::launch::async, [&] {
    v1::CompleteResponse resp;
    return Complete(cluster, Request(1500, 1, 8), std::chrono::seconds(60), &resp);
  });
  ASSERT_TRUE(WaitFor([&] { return cluster.PrefillLoad(0).running_requests() > 0; },
                      std::chrono::seconds(20)))
      << "the prefill never started";
  cluster.prefill_process(0).Signal(SIGSTOP);  // alive to the kernel, silent to everyone
  const auto stopped = Clock::now();
  const grpc::Status status = pending.get();
  const double seconds = SecondsSince(stopped);
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_LT(seconds, 5.0) << "the stream waited for its deadline instead of noticing";
  // The decode worker reclaimed the reservation on its own (its lease ran out).
  ASSERT_TRUE(
      WaitFor([&] { return cluster.DecodeLoad(0).kv_blocks_used() == 0; }, std::chrono::seconds(5)))
      << "decode worker still holds " << cluster.DecodeLoad(0).kv_blocks_used() << " blocks";
  // Woken up, the prefill worker learns its request is gone and frees its blocks too.
  cluster.prefill_process(0).Signal(SIGCONT);
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
  std::printf("stalled prefill: the stream ended %.2f s after SIGSTOP (%s)\n", seconds,
              status.error_message().c_str());
}

TEST(Faults, ClientDeadlineStopsARunningPrefillBetweenLayers) {
  Cluster cluster({.model = MidSizeModel("fault_cancel", 4096)});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  // How long the whole prompt takes when nobody gives up (another salt: no prefix reuse).
  v1::CompleteResponse resp;
  auto start = Clock::now();
  ASSERT_TRUE(Complete(cluster, Request(3000, 2, 1), std::chrono::seconds(60), &resp).ok());
  const double full = SecondsSince(start);
  // The same size again, with a client that gives up a fifth of the way in.
  const auto give_up = std::chrono::milliseconds(static_cast<int64_t>(full * 1000 / 5));
  start = Clock::now();
  const grpc::Status status = Complete(cluster, Request(3000, 3, 1), give_up, &resp);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  ASSERT_TRUE(WaitFor(
      [&] {
        const v1::WorkerLoad load = cluster.PrefillLoad(0);
        return load.running_requests() == 0 && load.queue_depth() == 0;
      },
      std::chrono::seconds(10)));
  const double stopped = SecondsSince(start);
  std::printf(
      "full prefill %.2f s; given up after %.2f s, the prefill worker was idle %.2f s "
      "after the request began\n",
      full, full / 5, stopped);
  EXPECT_LT(stopped, full * 0.8) << "the prefill ran to the end for a client that had left";
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
}

TEST(Faults, RouterKilledMidStreamLeavesNoBlockHeldOnAnyWorker) {
  Cluster cluster({.model = MidSizeModel("fault_router", 4096)});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  grpc::ClientContext ctx;
  auto reader = cluster.router().Generate(&ctx, Request(20, 4, 3000));
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  ASSERT_GT(cluster.DecodeLoad(0).kv_blocks_used(), 0) << "the stream holds its blocks";
  cluster.router_process().Signal(SIGKILL);
  const auto killed = Clock::now();
  ASSERT_TRUE(WaitFor(
      [&] {
        const v1::WorkerLoad load = cluster.DecodeLoad(0);
        return load.kv_blocks_used() == 0 && load.running_requests() == 0;
      },
      std::chrono::seconds(5)))
      << "the decode worker kept generating for a router that is gone";
  std::printf("router killed: the decode worker freed the stream's blocks %.2f s later\n",
              SecondsSince(killed));
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
}

TEST(Faults, FourThousandTokenPromptOnTheDefaultModelCompletesDisaggregated) {
  const std::string model = testing_util::DefaultGgufPath();
  PDSERVE_SKIP_WITHOUT_DEFAULT_MODEL(model);
  // Two compute threads per worker on a 2-core machine: a prefill that saturates the CPU for
  // tens of seconds must neither lose its reservation nor be taken for a dead worker.
  Cluster cluster({.model = model, .kv_blocks = 512, .threads = 2});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  v1::GenerateRequest req;
  for (int i = 0; i < 4000; ++i) req.add_prompt_token_ids(1000 + (i * 7919) % 20000);
  req.mutable_sampling()->set_temperature(0.0f);
  req.set_max_tokens(8);
  req.set_ignore_eos(true);
  v1::CompleteResponse resp;
  const auto start = Clock::now();
  const grpc::Status status = Complete(cluster, req, std::chrono::seconds(280), &resp);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(resp.token_ids_size(), 8);
  EXPECT_EQ(resp.final().usage().prompt_tokens(), 4000);
  std::printf("4,000-token prompt: %.1f s end to end, prefill %.1f s, KV %.1f MB in %.0f ms\n",
              SecondsSince(start), resp.final().timings().prefill_ms() / 1e3,
              resp.final().timings().kv_transfer_bytes() / 1e6,
              resp.final().timings().kv_transfer_ms());
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
}

TEST(Faults, DecodeWorkerKilledMidStreamMigratesWithoutLosingOrRepeatingAToken) {
  const std::string model = testing_util::DefaultGgufPath();
  PDSERVE_SKIP_WITHOUT_DEFAULT_MODEL(model);
  Cluster cluster({.model = model, .decode_workers = 2});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  v1::GenerateRequest req;
  for (int i = 0; i < 24; ++i) req.add_prompt_token_ids(1000 + (i * 313) % 20000);
  req.mutable_sampling()->set_temperature(0.0f);
  req.set_max_tokens(160);
  req.set_ignore_eos(true);
  // The uninterrupted run.
  v1::CompleteResponse want;
  ASSERT_TRUE(Complete(cluster, req, std::chrono::seconds(120), &want).ok());
  ASSERT_EQ(want.token_ids_size(), 160);

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto reader = cluster.router().Generate(&ctx, req);
  v1::GenerateResponse msg;
  std::vector<int32_t> got;
  ASSERT_TRUE(reader->Read(&msg));
  got.insert(got.end(), msg.token_ids().begin(), msg.token_ids().end());
  // Kill whichever decode worker is generating it, mid-stream.
  int victim = -1;
  for (int i = 0; i < 2 && victim < 0; ++i) {
    if (cluster.DecodeLoad(i).running_requests() > 0) victim = i;
  }
  ASSERT_GE(victim, 0) << "no decode worker was generating the stream";
  cluster.decode_process(victim).Signal(SIGKILL);
  const auto killed = Clock::now();
  v1::FinalInfo final_info;
  while (reader->Read(&msg)) {
    got.insert(got.end(), msg.token_ids().begin(), msg.token_ids().end());
    if (msg.has_final()) final_info = msg.final();
  }
  const grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(final_info.migrations(), 1);
  EXPECT_EQ(final_info.decode_worker(), cluster.decode_addresses()[1 - victim]);
  EXPECT_EQ(final_info.usage().prompt_tokens(), 24);
  EXPECT_EQ(final_info.usage().completion_tokens(), 160);
  EXPECT_EQ(got, std::vector<int32_t>(want.token_ids().begin(), want.token_ids().end()))
      << "the migrated stream differs from the uninterrupted run";
  std::printf(
      "decode worker %d killed mid-stream: the stream finished on the other %.2f s later, "
      "%zu tokens equal to the uninterrupted run\n",
      victim, SecondsSince(killed), got.size());
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
}

}  // namespace
}  // namespace pdserve
