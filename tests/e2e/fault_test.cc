// Faults against real processes: kill -9 of a decode worker, a prefill worker or the router at
// chosen points (inside Reserve, during a layer's transfer, mid-decode), a stalled prefill
// worker, a link cut between prefill and decode, a client that gives up mid-prefill, a long
// prompt on the default model. Every stream must end (OK or a clear status) within a few seconds
// and every surviving worker must give back its KV blocks.
//
// The chosen points are serving/fault_points.h's: a worker started with PDSERVE_STOP_AT stops
// itself there (SIGSTOP); the test waits for the stop (ChildProcess::WaitStopped, event-driven),
// then kills it or cuts its link. No test sleeps.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "rpc/child_process.h"
#include "tests/default_model.h"
#include "tests/e2e/cluster.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;
using rpc::ChildProcess;
using testing_util::Cluster;
using testing_util::MidSizeModel;

// How long a test waits for a worker to reach its stop point (the request's way there is short).
constexpr std::chrono::seconds kStopTimeout{30};

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
double SecondsSince(Clock::time_point t) { return Seconds(Clock::now() - t); }

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

// What a request sent from another thread came to, and when it ended.
struct Outcome {
  grpc::Status status;
  v1::CompleteResponse response;
  Clock::time_point ended;
};

std::future<Outcome> CompleteInBackground(Cluster& cluster, const v1::GenerateRequest& req) {
  return std::async(std::launch::async, [&cluster, req] {
    Outcome out;
    out.status = Complete(cluster, req, std::chrono::seconds(60), &out.response);
    out.ended = Clock::now();
    return out;
  });
}

// `options` for a cluster whose processes named in `stop_at` stop themselves at a fault point,
// e.g. {"decode0", "decode.reserved"}. Start then sends no request of its own: it would trip the
// points before the test's request.
launch::LocalClusterOptions WithStopPoints(launch::LocalClusterOptions options,
                                           const std::map<std::string, std::string>& stop_at) {
  for (const auto& [name, point] : stop_at) {
    options.processes[name].env.push_back("PDSERVE_STOP_AT=" + point);
  }
  options.first_request = false;
  return options;
}

// The index of the first of `processes` to stop at its fault point. Giving the point to every
// worker of a role spares the test any knowledge of the router's choice: its pick stops first.
absl::StatusOr<int> FirstToStop(const std::vector<ChildProcess*>& processes) {
  absl::StatusOr<ChildProcess*> first = ChildProcess::WaitAnyStopped(processes, kStopTimeout);
  if (!first.ok()) return first.status();
  const int index =
      static_cast<int>(std::find(processes.begin(), processes.end(), *first) - processes.begin());
  if (!(*first)->running()) {
    return absl::InternalError(absl::StrCat("process ", index, " ", (*first)->ExitDescription(),
                                            " instead of stopping; its log ends with:\n",
                                            (*first)->LogTail()));
  }
  return index;
}

// Waits until `process` stops at its own fault point, then lets it go on.
absl::Status ContinueOnceStopped(ChildProcess& process) {
  const absl::StatusOr<bool> stopped = process.WaitStopped(kStopTimeout);
  if (!stopped.ok()) return stopped.status();
  if (!*stopped) {
    return absl::InternalError(absl::StrCat("the process ", process.ExitDescription(),
                                            " instead of stopping; its log ends with:\n",
                                            process.LogTail()));
  }
  process.Signal(SIGCONT);
  return absl::OkStatus();
}

// The same request again, uninterrupted (every stop point has fired by now), must give the same
// ids: greedy decoding after a retry is no different from a first try.
void ExpectSameAsUninterrupted(Cluster& cluster, const v1::GenerateRequest& req,
                               const v1::CompleteResponse& got) {
  v1::CompleteResponse want;
  const grpc::Status status = Complete(cluster, req, std::chrono::seconds(60), &want);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(std::vector<int32_t>(got.token_ids().begin(), got.token_ids().end()),
            std::vector<int32_t>(want.token_ids().begin(), want.token_ids().end()))
      << "the request that met the fault differs from an uninterrupted run";
}

// Checks a request that met a kill and was retried: it completed within 5 s of the kill with
// every id, the same as an uninterrupted run's, and no surviving worker holds a block after.
void ExpectRecovered(Cluster& cluster, const v1::GenerateRequest& req, const Outcome& out,
                     Clock::time_point killed, const std::string& what) {
  const double seconds = Seconds(out.ended - killed);
  ASSERT_TRUE(out.status.ok()) << what << ": " << out.status.error_message();
  EXPECT_LT(seconds, 5.0) << what;
  EXPECT_EQ(out.response.token_ids_size(), req.max_tokens());
  ExpectSameAsUninterrupted(cluster, req, out.response);
  const auto check = Clock::now();
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
  std::printf(
      "%s: the request completed %.2f s after the kill (prefill %s, decode %s); no block held "
      "%.2f s after the check began\n",
      what.c_str(), seconds, out.response.final().prefill_worker().c_str(),
      out.response.final().decode_worker().c_str(), SecondsSince(check));
}

// Sends `req` to a cluster whose two decode workers carry the same stop point: kills the first
// to stop there (the router's pick), lets the other go on when the router's retry stops it at
// its own point, and expects the request to complete on that one.
void KillTheFirstDecodeWorkerToStop(Cluster& cluster, const v1::GenerateRequest& req,
                                    const std::string& where) {
  auto pending = CompleteInBackground(cluster, req);
  const absl::StatusOr<int> victim =
      FirstToStop({&cluster.decode_process(0), &cluster.decode_process(1)});
  ASSERT_TRUE(victim.ok()) << victim.status();
  cluster.decode_process(*victim).Signal(SIGKILL);
  const auto killed = Clock::now();
  const int survivor = 1 - *victim;
  ASSERT_EQ(ContinueOnceStopped(cluster.decode_process(survivor)), absl::OkStatus());
  const Outcome out = pending.get();
  EXPECT_EQ(out.response.final().decode_worker(), cluster.decode_addresses()[survivor]);
  ExpectRecovered(cluster, req, out, killed,
                  absl::StrCat("decode worker ", *victim, " killed ", where));
}

bool NoBlocksUsed(const v1::WorkerLoad& load) { return load.kv_blocks_used() == 0; }
bool Idle(const v1::WorkerLoad& load) {
  return load.kv_blocks_used() == 0 && load.running_requests() == 0 && load.queue_depth() == 0;
}

TEST(Faults, StalledPrefillWorkerEndsTheStreamWithinFiveSecondsAndFreesTheReservation) {
  Cluster cluster({.model = MidSizeModel("fault_stall", 4096)});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  auto pending = std::async(std::launch::async, [&] {
    v1::CompleteResponse resp;
    return Complete(cluster, Request(1500, 1, 8), std::chrono::seconds(60), &resp);
  });
  const auto started = cluster.AwaitPrefillLoad(
      0, [](const v1::WorkerLoad& load) { return load.running_requests() > 0; },
      std::chrono::seconds(20));
  ASSERT_TRUE(started.ok()) << "the prefill never started: " << started.status();
  cluster.prefill_process(0).Signal(SIGSTOP);  // alive to the kernel, silent to everyone
  const auto stopped = Clock::now();
  const grpc::Status status = pending.get();
  const double seconds = SecondsSince(stopped);
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_LT(seconds, 5.0) << "the stream waited for its deadline instead of noticing";
  // The decode worker reclaimed the reservation on its own (its lease ran out).
  const auto freed = cluster.AwaitDecodeLoad(0, NoBlocksUsed, std::chrono::seconds(5));
  ASSERT_TRUE(freed.ok()) << freed.status();
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
  const auto idle = cluster.AwaitPrefillLoad(
      0,
      [](const v1::WorkerLoad& load) {
        return load.running_requests() == 0 && load.queue_depth() == 0;
      },
      std::chrono::seconds(10));
  ASSERT_TRUE(idle.ok()) << idle.status();
  const double stopped = SecondsSince(start);
  std::printf(
      "full prefill %.2f s; given up after %.2f s, the prefill worker was idle %.2f s "
      "after the request began\n",
      full, full / 5, stopped);
  EXPECT_LT(stopped, full * 0.8) << "the prefill ran to the end for a client that had left";
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
}

// A worker deep in a long prompt (its one compute thread busy) is alive: health answers from
// gRPC's threads, so a Kubernetes liveness probe with a 1 s timeout never kills it for working.
TEST(Health, EveryServerAnswersItsProbeWhileThePrefillWorkerComputes) {
  Cluster cluster({.model = MidSizeModel("health_busy", 4096)});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  auto pending = CompleteInBackground(cluster, Request(3000, 9, 2));
  const auto busy = cluster.AwaitPrefillLoad(
      0, [](const v1::WorkerLoad& load) { return load.running_requests() > 0; },
      std::chrono::seconds(20));
  ASSERT_TRUE(busy.ok()) << busy.status();
  struct Probe {
    const char* role;
    std::string address;
    const char* service;  // its own, as a probe names it
  };
  const Probe servers[] = {{"prefill", cluster.prefill_addresses()[0], "pdserve.v1.PrefillWorker"},
                           {"decode", cluster.decode_addresses()[0], "pdserve.v1.DecodeWorker"},
                           {"router", cluster.router_address(), "pdserve.v1.Generation"}};
  for (const auto& [role, address, own] : servers) {
    for (const char* service : {"", own}) {
      auto stub = grpc::health::v1::Health::NewStub(cluster.Channel(address));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      grpc::health::v1::HealthCheckRequest request;
      request.set_service(service);
      grpc::health::v1::HealthCheckResponse response;
      const auto start = Clock::now();
      const grpc::Status status = stub->Check(&ctx, request, &response);
      ASSERT_TRUE(status.ok()) << role << " '" << service << "': " << status.error_message();
      EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << role;
      std::printf("%s health '%s' answered in %.1f ms while the prefill computes\n", role, service,
                  SecondsSince(start) * 1000);
    }
  }
  const Outcome out = pending.get();
  EXPECT_TRUE(out.status.ok()) << out.status.error_message();
}

// SIGTERM (what Kubernetes sends a pod it removes) to the decode worker generating a stream: it
// finishes that stream itself, takes no new request (those complete on the other decode
// worker), frees every block and exits 0.
TEST(Drain, SigtermedDecodeWorkerFinishesItsStreamTakesNoNewOneAndExitsZero) {
  Cluster cluster({.model = MidSizeModel("drain_decode", 4096), .decode_workers = 2});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto reader = cluster.router().Generate(&ctx, Request(40, 10, 400));
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  int tokens = msg.token_ids_size();
  int victim = -1;
  for (int i = 0; i < 2 && victim < 0; ++i) {
    if (cluster.DecodeLoad(i).running_requests() > 0) victim = i;
  }
  ASSERT_GE(victim, 0) << "no decode worker was generating the stream";
  const int survivor = 1 - victim;
  cluster.decode_process(victim).Signal(SIGTERM);
  const auto term = Clock::now();
  // New requests right after the signal: none fails, none lands on the draining worker.
  for (int i = 0; i < 6; ++i) {
    v1::CompleteResponse resp;
    const grpc::Status status =
        Complete(cluster, Request(30, 20 + i, 4), std::chrono::seconds(30), &resp);
    ASSERT_TRUE(status.ok()) << "request " << i << ": " << status.error_message();
    EXPECT_EQ(resp.final().decode_worker(), cluster.decode_addresses()[survivor]) << i;
  }
  v1::FinalInfo final_info;
  while (reader->Read(&msg)) {
    tokens += msg.token_ids_size();
    if (msg.has_final()) final_info = msg.final();
  }
  const grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(tokens, 400);
  EXPECT_EQ(final_info.migrations(), 0) << "the draining worker should finish its own stream";
  EXPECT_EQ(final_info.decode_worker(), cluster.decode_addresses()[victim]);
  const int wait_status = cluster.decode_process(victim).Wait(std::chrono::seconds(20));
  ASSERT_NE(wait_status, -1) << "the drained decode worker did not exit";
  EXPECT_TRUE(WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0)
      << cluster.decode_process(victim).ExitDescription();
  std::printf("decode worker drained: exited %.2f s after SIGTERM, its stream complete\n",
              SecondsSince(term));
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
}

// SIGTERM to a prefill worker while prompts stream through both: no request is lost (the one it
// computes finishes, later ones go to the other worker) and it exits 0.
TEST(Drain, SigtermedPrefillWorkerLosesNoRequestAndExitsZero) {
  Cluster cluster({.model = MidSizeModel("drain_prefill", 4096), .prefill_workers = 2});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  std::vector<std::future<Outcome>> pending;
  for (int i = 0; i < 8; ++i)
    pending.push_back(CompleteInBackground(cluster, Request(600, 30 + i, 2)));
  const auto busy = cluster.AwaitPrefillLoad(
      0, [](const v1::WorkerLoad& load) { return load.running_requests() > 0; },
      std::chrono::seconds(30));
  ASSERT_TRUE(busy.ok()) << busy.status();
  cluster.prefill_process(0).Signal(SIGTERM);
  const auto term = Clock::now();
  int on_drained = 0;
  for (auto& p : pending) {
    const Outcome out = p.get();
    ASSERT_TRUE(out.status.ok()) << out.status.error_message();
    on_drained += out.response.final().prefill_worker() == cluster.prefill_addresses()[0];
  }
  EXPECT_GE(on_drained, 1) << "the prompt it was computing should finish there";
  const int wait_status = cluster.prefill_process(0).Wait(std::chrono::seconds(20));
  ASSERT_NE(wait_status, -1) << "the drained prefill worker did not exit";
  EXPECT_TRUE(WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0)
      << cluster.prefill_process(0).ExitDescription();
  std::printf(
      "prefill worker drained: exited %.2f s after SIGTERM; %d of 8 requests finished "
      "there, none failed\n",
      SecondsSince(term), on_drained);
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
}

// A port nobody listens on now (bound and released by the kernel's choice).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  close(fd);
  return ok ? ntohs(addr.sin_port) : 0;
}

// While a worker loads its model, its port answers health NOT_SERVING (a readiness probe gets an
// answer, not a refused connection); once it serves, the same port says SERVING.
TEST(Health, WorkerIsNotServingWhileItsModelLoadsThenServesOnTheSamePort) {
  const std::string model = testing_util::DefaultGgufPath();
  PDSERVE_SKIP_WITHOUT_DEFAULT_MODEL(model);
  const int port = FreePort();
  ASSERT_GT(port, 0);
  const std::string address = absl::StrCat("127.0.0.1:", port);
  const std::string dir = testing_util::FreshDir("health_loading");
  ChildProcess worker(
      {rpc::BinaryPath("pdserve-prefill"), "--model=" + model, "--listen=" + address, "--threads=1",
       "--kv-blocks=64", "--port-file=" + dir + "/port"},
      dir + "/prefill.log");
  // Redial every few ms while the port is closed (gRPC's default first backoff is 1 s, longer
  // than the model's load here).
  grpc::ChannelArguments redial;
  redial.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 10);
  redial.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 10);
  redial.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 20);
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), redial));
  grpc::health::v1::HealthCheckRequest request;  // "": the whole server, as a probe asks
  grpc::health::v1::HealthCheckResponse response;
  {
    // Connects as soon as the port listens (wait_for_ready), which is before the model loads.
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto reader = health->Watch(&ctx, request);
    ASSERT_TRUE(reader->Read(&response)) << worker.LogTail();
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
    // The loading server's stream ends (OK) when it hands the port over, never saying SERVING.
    while (reader->Read(&response)) {
      EXPECT_NE(response.status(), grpc::health::v1::HealthCheckResponse::SERVING)
          << "the first connection reached the serving worker: the model loaded too fast?";
    }
    EXPECT_TRUE(reader->Finish().ok());
  }
  // A watch that still reaches the loading server in its last moments ends at once; a later one
  // reaches the worker that serves. How many end at once depends on how long the hand-over takes
  // (on a loaded machine, more than 5 did): retry until a deadline, not a count.
  bool serving = false;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!serving && std::chrono::steady_clock::now() < give_up) {
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto reader = health->Watch(&ctx, request);
    while (!serving && reader->Read(&response)) {
      serving = response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
    }
    ctx.TryCancel();
    (void)reader->Finish();
  }
  EXPECT_TRUE(serving) << worker.LogTail();
  const absl::StatusOr<int> served_port =
      rpc::WaitForPortFile(dir + "/port", worker, std::chrono::seconds(10));
  ASSERT_TRUE(served_port.ok()) << served_port.status();
  EXPECT_EQ(*served_port, port);
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
  const auto idle = cluster.AwaitDecodeLoad(0, Idle, std::chrono::seconds(5));
  ASSERT_TRUE(idle.ok()) << "the decode worker kept generating for a router that is gone: "
                         << idle.status();
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

// Kill -9 of a decode worker inside Reserve: the reservation is made, the answer not yet sent.
// The router's Reserve fails with UNAVAILABLE as the connection drops and it moves on to the
// next decode candidate (RequestFlow::OnReserved); the blocks reserved on the dead worker died
// with it. So the request completes on the other decode worker: OK, not an error.
TEST(Faults, DecodeWorkerKilledDuringReserveCompletesOnTheOtherDecodeWorker) {
  Cluster cluster(WithStopPoints({.model = MidSizeModel("fault_reserve"), .decode_workers = 2},
                                 {{"decode0", "decode.reserved"}, {"decode1", "decode.reserved"}}));
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  KillTheFirstDecodeWorkerToStop(cluster, Request(40, 5, 16), "inside Reserve");
}

// Kill -9 of a prefill worker while it pushes a prompt's KV, layer 3 of 8 queued: the router's
// Prefill fails with UNAVAILABLE, so it releases the reservation the dead worker was filling
// (part of it written) and retries once, with a fresh reservation, on the other prefill worker
// (RequestFlow::OnPrefilled). Had the router died too, the lease (1 s) would free it.
TEST(Faults, PrefillWorkerKilledDuringALayersTransferIsRetriedOnTheOtherWithAFreshReservation) {
  Cluster cluster(WithStopPoints(
      {.model = MidSizeModel("fault_layer"), .prefill_workers = 2},
      {{"prefill0", "prefill.layer_queued@3"}, {"prefill1", "prefill.layer_queued@3"}}));
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  const v1::GenerateRequest req = Request(200, 6, 16);
  auto pending = CompleteInBackground(cluster, req);
  const absl::StatusOr<int> victim =
      FirstToStop({&cluster.prefill_process(0), &cluster.prefill_process(1)});
  ASSERT_TRUE(victim.ok()) << victim.status();
  const int64_t one_reservation = cluster.DecodeLoad(0).kv_blocks_used();
  ASSERT_GT(one_reservation, 0) << "no reservation held during the transfer";
  cluster.prefill_process(*victim).Signal(SIGKILL);
  const auto killed = Clock::now();
  const int survivor = 1 - *victim;
  // The retry reaches layer 3 on the other prefill worker: by then the first reservation must
  // be gone, the decode worker holding the second only.
  const absl::StatusOr<bool> stopped = cluster.prefill_process(survivor).WaitStopped(kStopTimeout);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  ASSERT_TRUE(*stopped) << cluster.prefill_process(survivor).ExitDescription();
  EXPECT_EQ(cluster.DecodeLoad(0).kv_blocks_used(), one_reservation)
      << "the reservation the dead prefill worker was filling is still held";
  cluster.prefill_process(survivor).Signal(SIGCONT);
  const Outcome out = pending.get();
  EXPECT_EQ(out.response.final().prefill_worker(), cluster.prefill_addresses()[survivor]);
  ExpectRecovered(cluster, req, out, killed,
                  absl::StrCat("prefill worker ", *victim, " killed with layer 3 queued"));
}

// Kill -9 of a decode worker receiving a prompt's KV, layer 3's frame stored, its ack not sent:
// the prefill worker's push fails with the connection, and its Prefill answers UNAVAILABLE
// marked as the KV destination's failure (rpc::kKvDestinationFailedKey). The router then avoids
// that decode worker, not the prefill worker: it releases (the dead worker refuses) and retries
// with a fresh reservation on the other decode worker, computed by the same prefill worker (there
// is only one). The stream completes there.
TEST(Faults, DecodeWorkerKilledWhileReceivingALayerCompletesOnTheOtherDecodeWorker) {
  Cluster cluster(WithStopPoints(
      {.model = MidSizeModel("fault_receive"), .prefill_workers = 1, .decode_workers = 2},
      {{"decode0", "decode.frame_stored@3"}, {"decode1", "decode.frame_stored@3"}}));
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  KillTheFirstDecodeWorkerToStop(cluster, Request(200, 7, 16), "with layer 3 stored");
}

// `ip` from iproute2, or "" where this machine has none.
std::string IpCommand() {
  for (const char* path : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
    if (access(path, X_OK) == 0) return path;
  }
  return "";
}

// A network namespace joined to this one by a veth pair on a private /30 (`prefix`.1 here,
// `prefix`.2 inside), to run one worker across a link the test can cut. Deleted on destruction;
// leftovers of the same names (from a run killed midway) are deleted first. The names are the
// machine's, so a lock file keeps a concurrent run (another build's tests) waiting until this
// one is done. Needs root.
class NetnsLink {
 public:
  static absl::StatusOr<std::unique_ptr<NetnsLink>> Create(const std::string& ip,
                                                           const std::string& name,
                                                           const std::string& prefix) {
    std::unique_ptr<NetnsLink> link(new NetnsLink(ip, name, prefix));
    const std::string lock = (std::filesystem::temp_directory_path() / (name + ".lock")).string();
    link->lock_fd_ = open(lock.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (link->lock_fd_ < 0 || flock(link->lock_fd_, LOCK_EX) != 0) {
      return absl::FailedPreconditionError(absl::StrCat("cannot lock ", lock));
    }
    link->Delete();
    const std::string inside = link->veth_ + "n";
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
             {"netns", "add", name},
             {"link", "add", link->veth_, "type", "veth", "peer", "name", inside},
             {"link", "set", inside, "netns", name},
             {"addr", "add", link->host_address() + "/30", "dev", link->veth_},
             {"link", "set", link->veth_, "up"},
             {"-n", name, "addr", "add", link->ns_address() + "/30", "dev", inside},
             {"-n", name, "link", "set", inside, "up"}}) {
      if (absl::Status s = link->Ip(args); !s.ok()) return s;
    }
    return link;
  }
  ~NetnsLink() {
    if (lock_fd_ < 0) return;  // never locked: the names may be another run's
    Delete();
    close(lock_fd_);
  }

  // The host's end of the link up, or down: down drops every packet both ways, with no reset
  // sent to either side, as a pulled cable or a dead switch would.
  absl::Status SetUp(bool up) { return Ip({"link", "set", veth_, up ? "up" : "down"}); }
  // The command line prefix that runs a program inside the namespace (ip execs it in place).
  std::vector<std::string> Exec() const { return {ip_, "netns", "exec", name_}; }
  std::string host_address() const { return prefix_ + ".1"; }
  std::string ns_address() const { return prefix_ + ".2"; }

 private:
  NetnsLink(std::string ip, std::string name, std::string prefix)
      : ip_(std::move(ip)),
        name_(std::move(name)),
        prefix_(std::move(prefix)),
        veth_(name_.substr(0, 14)),  // the peer adds a letter; interface names end at 15
        log_(testing_util::FreshDir("netns_" + name_) + "/ip.log") {}

  absl::Status Ip(std::vector<std::string> args) const {
    args.insert(args.begin(), ip_);
    std::error_code ignored;
    std::filesystem::remove(log_, ignored);  // this command's output only
    ChildProcess ip(args, log_);
    const int status = ip.Wait(std::chrono::seconds(30));
    if (status == 0) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat(absl::StrJoin(args, " "), " ", ip.ExitDescription(), ": ", ip.LogTail(500)));
  }
  // Both ends of the veth go with either; errors (nothing to delete) are expected.
  void Delete() const {
    Ip({"link", "del", veth_}).IgnoreError();
    Ip({"netns", "del", name_}).IgnoreError();
  }

  const std::string ip_, name_, prefix_, veth_, log_;
  int lock_fd_ = -1;  // holds an exclusive flock on the names
};

// A link cut mid-transfer, between a prefill worker in another network namespace and the decode
// worker and router on the host: the prefill worker stops with layer 2 of 8 queued, the host's
// end of the link goes down (packets dropped, no reset: neither side is told), and the prefill
// worker resumes into the void. The router's keepalive pings on the prefill channel go
// unanswered, so the request ends UNAVAILABLE (its only prefill worker is cut off) within
// seconds; the decode worker frees the reservation (released by the router, or the lease runs
// out with no frame arriving); and once the link is back, the prefill worker learns that its
// push and its call are dead and frees its blocks too.
TEST(Faults, CutLinkBetweenPrefillAndDecodeEndsTheStreamAndFreesEverything) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to create a network namespace and a veth pair";
  const std::string ip = IpCommand();
  if (ip.empty()) GTEST_SKIP() << "needs iproute2's ip to create a network namespace";
  absl::StatusOr<std::unique_ptr<NetnsLink>> link =
      NetnsLink::Create(ip, "pdserve-cut", "10.213.77");
  if (!link.ok()) GTEST_SKIP() << "cannot create a network namespace here: " << link.status();
  launch::LocalClusterOptions options = WithStopPoints({.model = MidSizeModel("fault_cut")},
                                                       {{"prefill0", "prefill.layer_queued@2"}});
  options.processes["prefill0"].wrapper = (*link)->Exec();
  options.processes["prefill0"].host = (*link)->ns_address();
  options.processes["decode0"].kv_host = (*link)->host_address();
  Cluster cluster(std::move(options));
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  auto pending = CompleteInBackground(cluster, Request(200, 8, 16));
  const absl::StatusOr<bool> stopped = cluster.prefill_process(0).WaitStopped(kStopTimeout);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  ASSERT_TRUE(*stopped) << cluster.prefill_process(0).LogTail();
  ASSERT_GT(cluster.DecodeLoad(0).kv_blocks_used(), 0) << "no reservation held mid-transfer";
  ASSERT_EQ((*link)->SetUp(false), absl::OkStatus());
  const auto cut = Clock::now();
  cluster.prefill_process(0).Signal(SIGCONT);
  // No frame or keepalive gets through: the lease frees the reservation, if the router has not
  // released it first.
  const auto freed = cluster.AwaitDecodeLoad(0, NoBlocksUsed, std::chrono::seconds(5));
  ASSERT_TRUE(freed.ok()) << freed.status();
  const double decode_freed = SecondsSince(cut);
  const Outcome out = pending.get();
  const double seconds = Seconds(out.ended - cut);
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::UNAVAILABLE) << out.status.error_message();
  EXPECT_NE(out.status.error_message().find(cluster.prefill_addresses()[0]), std::string::npos)
      << "the status does not name the prefill worker: " << out.status.error_message();
  EXPECT_LT(seconds, 5.0);
  ASSERT_EQ((*link)->SetUp(true), absl::OkStatus());
  const auto restored = Clock::now();
  std::string detail;
  EXPECT_TRUE(cluster.WaitAllBlocksFree(&detail)) << detail;
  std::printf(
      "link cut with layer 2 queued: the decode worker held no block %.2f s after the cut, the "
      "stream ended %.2f s after it (%s); with the link back, no worker held a block %.2f s "
      "later\n",
      decode_freed, seconds, out.status.error_message().c_str(), SecondsSince(restored));
}

}  // namespace
}  // namespace pdserve
