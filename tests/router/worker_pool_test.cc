#include "router/worker_pool.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "router/worker_discovery.h"

namespace pdserve::router {
namespace {

constexpr int64_t kTokensPerBlock = 4;

v1::ModelInfo Info(const std::string& fingerprint) {
  v1::ModelInfo info;
  info.set_architecture("LlamaForCausalLM");
  info.set_fingerprint(fingerprint);
  info.set_vocab_size(1000);
  info.set_max_context(256);
  return info;
}

v1::WorkerLoad Load(int32_t queue, int64_t free_blocks, int32_t running = 0) {
  v1::WorkerLoad load;
  load.set_queue_depth(queue);
  load.set_running_requests(running);
  load.set_kv_blocks_total(1000);
  load.set_kv_blocks_free(free_blocks);
  load.set_tokens_per_block(kTokensPerBlock);
  return load;
}

// Adds `address` as a healthy worker of `role` serving model "fp".
void AddWorker(WorkerPool& pool, WorkerRole role, const std::string& address,
               const v1::WorkerLoad& load, const std::string& fingerprint = "fp") {
  std::vector<std::string> members = pool.Members(role);
  members.push_back(address);
  pool.SetMembers(role, members);
  pool.ReportModelInfo(role, address, Info(fingerprint));
  pool.ReportLoad(role, address, load);
}

std::vector<int32_t> PromptWithPrefix(int32_t prefix, int32_t suffix, int length = 10) {
  std::vector<int32_t> p(static_cast<size_t>(length), suffix);
  for (int i = 0; i < kTokensPerBlock; ++i) p[static_cast<size_t>(i)] = prefix * 10 + i;
  return p;
}

TEST(WorkerPoolTest, DecodeCandidatesMostFreeBlocksFirst) {
  WorkerPool pool;
  AddWorker(pool, WorkerRole::kDecode, "a:1", Load(0, 10));
  AddWorker(pool, WorkerRole::kDecode, "b:1", Load(0, 30));
  AddWorker(pool, WorkerRole::kDecode, "c:1", Load(0, 20));
  EXPECT_EQ(pool.DecodeCandidates(), (std::vector<std::string>{"b:1", "c:1", "a:1"}));
  // A reservation of 48 tokens (12 blocks) on b makes c the roomiest until b reports again.
  pool.NoteReserved("b:1", 48);
  EXPECT_EQ(pool.DecodeCandidates(), (std::vector<std::string>{"c:1", "b:1", "a:1"}));
  pool.ReportLoad(WorkerRole::kDecode, "b:1", Load(0, 30));
  EXPECT_EQ(pool.DecodeCandidates().front(), "b:1");
}

TEST(WorkerPoolTest, NewWorkerIsNotEligibleBeforeItReportsLoadAndModel) {
  WorkerPool pool;
  pool.SetMembers(WorkerRole::kDecode, {"a:1"});
  EXPECT_TRUE(pool.DecodeCandidates().empty());
  EXPECT_TRUE(pool.NeedsModelInfo(WorkerRole::kDecode, "a:1"));
  pool.ReportModelInfo(WorkerRole::kDecode, "a:1", Info("fp"));
  EXPECT_FALSE(pool.NeedsModelInfo(WorkerRole::kDecode, "a:1"));
  EXPECT_TRUE(pool.DecodeCandidates().empty());
  pool.ReportLoad(WorkerRole::kDecode, "a:1", Load(0, 5));
  EXPECT_EQ(pool.DecodeCandidates(), std::vector<std::string>{"a:1"});
}

TEST(WorkerPoolTest, UnhealthyWorkersAreSkippedUntilAPollSucceeds) {
  WorkerPool pool(WorkerPoolOptions{.unhealthy_after_failures = 2});
  AddWorker(pool, WorkerRole::kDecode, "a:1", Load(0, 50));
  AddWorker(pool, WorkerRole::kDecode, "b:1", Load(0, 10));
  const absl::Status down = absl::UnavailableError("connection refused");
  pool.ReportLoad(WorkerRole::kDecode, "a:1", down);  // one miss is tolerated
  EXPECT_EQ(pool.DecodeCandidates().front(), "a:1");
  pool.ReportLoad(WorkerRole::kDecode, "a:1", down);
  EXPECT_EQ(pool.DecodeCandidates(), std::vector<std::string>{"b:1"});
  // Back, possibly restarted: eligible again once it has told its model anew.
  EXPECT_TRUE(pool.NeedsModelInfo(WorkerRole::kDecode, "a:1"));
  pool.ReportLoad(WorkerRole::kDecode, "a:1", Load(0, 50));
  EXPECT_EQ(pool.DecodeCandidates(), std::vector<std::string>{"b:1"});
  pool.ReportModelInfo(WorkerRole::kDecode, "a:1", Info("fp"));
  EXPECT_EQ(pool.DecodeCandidates().front(), "a:1");
  // A failed request takes it out at once.
  pool.MarkUnhealthy(WorkerRole::kDecode, "a:1");
  EXPECT_EQ(pool.DecodeCandidates(), std::vector<std::string>{"b:1"});
}

TEST(WorkerPoolTest, DrainingWorkersAreSkipped) {
  WorkerPool pool;
  v1::WorkerLoad draining = Load(0, 99);
  draining.set_draining(true);
  AddWorker(pool, WorkerRole::kDecode, "a:1", draining);
  AddWorker(pool, WorkerRole::kDecode, "b:1", Load(0, 1));
  EXPECT_EQ(pool.DecodeCandidates(), std::vector<std::string>{"b:1"});
  AddWorker(pool, WorkerRole::kPrefill, "p:1", draining);
  EXPECT_FALSE(pool.PickPrefill(PromptWithPrefix(1, 0)).has_value());
}

TEST(WorkerPoolTest, WorkersServingAnotherModelAreExcluded) {
  WorkerPool pool;
  AddWorker(pool, WorkerRole::kDecode, "old:1", Load(0, 10), "fp");
  AddWorker(pool, WorkerRole::kDecode, "other:1", Load(0, 90), "other-fp");
  ASSERT_TRUE(pool.model_info() != nullptr);
  EXPECT_EQ(pool.model_info()->fingerprint(), "fp");  // the longest-known worker's
  EXPECT_EQ(pool.DecodeCandidates(), std::vector<std::string>{"old:1"});
  // Once every worker of the old model has left, the new model is the reference.
  pool.SetMembers(WorkerRole::kDecode, {"other:1"});
  EXPECT_EQ(pool.model_info()->fingerprint(), "other-fp");
  EXPECT_EQ(pool.DecodeCandidates(), std::vector<std::string>{"other:1"});
}

TEST(WorkerPoolTest, ReadyNeedsAnEligiblePrefillAndDecodeWorker) {
  WorkerPool pool;
  EXPECT_FALSE(pool.Ready());
  EXPECT_TRUE(pool.model_info() == nullptr);
  AddWorker(pool, WorkerRole::kPrefill, "p:1", Load(0, 10));
  EXPECT_FALSE(pool.Ready());
  AddWorker(pool, WorkerRole::kDecode, "d:1", Load(0, 10));
  EXPECT_TRUE(pool.Ready());
  pool.MarkUnhealthy(WorkerRole::kPrefill, "p:1");
  EXPECT_FALSE(pool.Ready());
}

TEST(WorkerPoolTest, PrefillGoesToTheLeastLoadedWhenLoadsDifferBeyondTheSlack) {
  WorkerPool pool(WorkerPoolOptions{.affinity_slack = 2});
  AddWorker(pool, WorkerRole::kPrefill, "busy:1", Load(5, 0, 1));
  AddWorker(pool, WorkerRole::kPrefill, "idle:1", Load(0, 0, 1));
  for (int prefix = 0; prefix < 20; ++prefix) {
    EXPECT_EQ(pool.PickPrefill(PromptWithPrefix(prefix, 0)), "idle:1");
  }
}

TEST(WorkerPoolTest, PrefillAffinityKeepsAPrefixOnOneWorkerAndSpreadsPrefixes) {
  WorkerPool pool(WorkerPoolOptions{.affinity_slack = 2});
  for (const char* a : {"p0:1", "p1:1", "p2:1", "p3:1"}) {
    AddWorker(pool, WorkerRole::kPrefill, a, Load(0, 0));
  }
  std::map<std::string, int> per_worker;
  for (int prefix = 0; prefix < 64; ++prefix) {
    const std::optional<std::string> first = pool.PickPrefill(PromptWithPrefix(prefix, 1));
    ASSERT_TRUE(first.has_value());
    ++per_worker[*first];
    // Same first block, different rest: same worker (its prefix cache has the block).
    for (int suffix = 2; suffix < 5; ++suffix) {
      EXPECT_EQ(pool.PickPrefill(PromptWithPrefix(prefix, suffix, 12)), first);
    }
  }
  EXPECT_EQ(per_worker.size(), 4u);  // every worker gets some prefixes
  for (const auto& [address, n] : per_worker) EXPECT_GE(n, 4) << address;
}

TEST(WorkerPoolTest, PrefillAffinityGivesWayToLoadBeyondTheSlack) {
  WorkerPool pool(WorkerPoolOptions{.affinity_slack = 1});
  AddWorker(pool, WorkerRole::kPrefill, "a:1", Load(0, 0));
  AddWorker(pool, WorkerRole::kPrefill, "b:1", Load(0, 0));
  const std::vector<int32_t> prompt = PromptWithPrefix(7, 0);
  const std::string preferred = *pool.PickPrefill(prompt);
  const std::string other = preferred == "a:1" ? "b:1" : "a:1";
  pool.ReportLoad(WorkerRole::kPrefill, preferred, Load(1, 0));  // within the slack
  EXPECT_EQ(pool.PickPrefill(prompt), preferred);
  pool.ReportLoad(WorkerRole::kPrefill, preferred, Load(2, 0));  // beyond it
  EXPECT_EQ(pool.PickPrefill(prompt), other);
}

TEST(WorkerPoolTest, PrefillAffinityOnlyMovesTheShareOfAWorkerThatLeaves) {
  WorkerPool pool;
  for (const char* a : {"p0:1", "p1:1", "p2:1"})
    AddWorker(pool, WorkerRole::kPrefill, a, Load(0, 0));
  std::map<int, std::string> before;
  for (int prefix = 0; prefix < 48; ++prefix)
    before[prefix] = *pool.PickPrefill(PromptWithPrefix(prefix, 0));
  pool.SetMembers(WorkerRole::kPrefill, {"p0:1", "p1:1"});
  for (const auto& [prefix, address] : before) {
    if (address != "p2:1") {
      EXPECT_EQ(pool.PickPrefill(PromptWithPrefix(prefix, 0)), address);
    }
  }
}

TEST(WorkerPoolTest, PrefillStartsAreCountedUntilTheNextPoll) {
  WorkerPool pool(WorkerPoolOptions{.affinity_slack = 0});
  AddWorker(pool, WorkerRole::kPrefill, "a:1", Load(0, 0));
  AddWorker(pool, WorkerRole::kPrefill, "b:1", Load(0, 0));
  const std::vector<int32_t> prompt = PromptWithPrefix(3, 0);
  const std::string first = *pool.PickPrefill(prompt);
  pool.NotePrefillStarted(first);
  EXPECT_NE(pool.PickPrefill(prompt), first);
  pool.ReportLoad(WorkerRole::kPrefill, first, Load(0, 0));
  EXPECT_EQ(pool.PickPrefill(prompt), first);
}

TEST(WorkerPoolTest, ShortPromptsTakeTurnsAmongTheLeastLoaded) {
  WorkerPool pool;
  AddWorker(pool, WorkerRole::kPrefill, "a:1", Load(0, 0));
  AddWorker(pool, WorkerRole::kPrefill, "b:1", Load(0, 0));
  AddWorker(pool, WorkerRole::kPrefill, "c:1", Load(1, 0));
  const std::vector<int32_t> shorter_than_a_block = {1, 2};
  std::set<std::string> picked;
  for (int i = 0; i < 4; ++i) picked.insert(*pool.PickPrefill(shorter_than_a_block));
  EXPECT_EQ(picked, (std::set<std::string>{"a:1", "b:1"}));
}

TEST(WorkerPoolTest, PrefillExcludesWorkersThatAlreadyFailed) {
  WorkerPool pool;
  AddWorker(pool, WorkerRole::kPrefill, "a:1", Load(0, 0));
  AddWorker(pool, WorkerRole::kPrefill, "b:1", Load(0, 0));
  const std::vector<int32_t> prompt = PromptWithPrefix(1, 0);
  const std::string first = *pool.PickPrefill(prompt);
  const std::optional<std::string> second = pool.PickPrefill(prompt, {first});
  ASSERT_TRUE(second.has_value());
  EXPECT_NE(*second, first);
  EXPECT_FALSE(pool.PickPrefill(prompt, {"a:1", "b:1"}).has_value());
}

TEST(WorkerPoolTest, AffinityHashIsStable) {
  // Fixed across processes and router replicas (no per-process seed).
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
  EXPECT_EQ(PrefixKey(prompt, 4), PrefixKey(std::vector<int32_t>{1, 2, 3, 4, 9}, 4));
  EXPECT_NE(PrefixKey(prompt, 4), PrefixKey(std::vector<int32_t>{1, 2, 3, 5}, 4));
  EXPECT_EQ(AffinityScore(PrefixKey(prompt, 4), "a:1"), AffinityScore(PrefixKey(prompt, 4), "a:1"));
}

// Discovery: the resolver is injected, so no DNS is involved.
class FakeResolver {
 public:
  Resolver resolver() {
    return [this](const std::string& name) -> absl::StatusOr<std::vector<std::string>> {
      auto it = answers_.find(name);
      if (it == answers_.end()) return absl::UnavailableError("cannot resolve " + name);
      return it->second;
    };
  }
  void Set(const std::string& name, std::vector<std::string> addresses) {
    answers_[name] = std::move(addresses);
  }
  void Fail(const std::string& name) { answers_.erase(name); }

 private:
  std::map<std::string, std::vector<std::string>> answers_;
};

TEST(WorkerDiscoveryTest, DnsRefreshAddsAndRemovesWorkers) {
  FakeResolver dns;
  dns.Set("decode.svc:50061", {"10.0.0.1:50061", "10.0.0.2:50061"});
  dns.Set("prefill.svc:50071", {"10.0.1.1:50071"});
  WorkerDiscovery discovery({.prefill = {"fixed:1"},
                             .prefill_dns = {"prefill.svc:50071"},
                             .decode_dns = {"decode.svc:50061"}},
                            dns.resolver());
  WorkerPool pool;
  discovery.Refresh(pool);
  EXPECT_EQ(pool.Members(WorkerRole::kPrefill),
            (std::vector<std::string>{"10.0.1.1:50071", "fixed:1"}));
  EXPECT_EQ(pool.Members(WorkerRole::kDecode),
            (std::vector<std::string>{"10.0.0.1:50061", "10.0.0.2:50061"}));
  // A pod goes, another comes.
  dns.Set("decode.svc:50061", {"10.0.0.2:50061", "10.0.0.3:50061"});
  discovery.Refresh(pool);
  EXPECT_EQ(pool.Members(WorkerRole::kDecode),
            (std::vector<std::string>{"10.0.0.2:50061", "10.0.0.3:50061"}));
}

TEST(WorkerDiscoveryTest, FailedResolutionKeepsTheLastAddresses) {
  FakeResolver dns;
  dns.Set("decode.svc:1", {"10.0.0.1:1"});
  WorkerDiscovery discovery({.decode_dns = {"decode.svc:1"}}, dns.resolver());
  WorkerPool pool;
  discovery.Refresh(pool);
  AddWorker(pool, WorkerRole::kDecode, "10.0.0.1:1", Load(0, 5));
  dns.Fail("decode.svc:1");
  discovery.Refresh(pool);
  EXPECT_EQ(pool.DecodeCandidates(), std::vector<std::string>{"10.0.0.1:1"});
}

TEST(WorkerDiscoveryTest, SplitAddressListDropsBlanks) {
  EXPECT_EQ(SplitAddressList(" a:1, b:2,,c:3 "), (std::vector<std::string>{"a:1", "b:2", "c:3"}));
  EXPECT_TRUE(SplitAddressList("").empty());
}

TEST(WorkerDiscoveryTest, GetaddrinfoResolvesLocalhost) {
  absl::StatusOr<std::vector<std::string>> r = ResolveWithGetaddrinfo("127.0.0.1:5000");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, std::vector<std::string>{"127.0.0.1:5000"});
  EXPECT_EQ(ResolveWithGetaddrinfo("no-port").status().code(), absl::StatusCode::kInvalidArgument);
}

// gRPC's target syntax: no scheme or an empty authority is the system resolver; a bad DNS server
// address is INVALID_ARGUMENT before anything is sent. (A real DNS server answering through
// dns://IP:PORT/ is exercised by tests/deploy/conformance_test.py, with dnsmasq.)
TEST(WorkerDiscoveryTest, ResolveTargetReadsGrpcStyleTargets) {
  for (const char* target : {"127.0.0.1:5000", "dns:///127.0.0.1:5000"}) {
    absl::StatusOr<std::vector<std::string>> r = ResolveTarget(target);
    ASSERT_TRUE(r.ok()) << target << ": " << r.status();
    EXPECT_EQ(*r, std::vector<std::string>{"127.0.0.1:5000"}) << target;
  }
  for (const char* target : {"dns://", "dns://10.0.0.1", "dns://not-an-ip/a:1",
                             "dns://10.0.0.1:99999/a:1", "dns://10.0.0.1:53/no-port"}) {
    EXPECT_EQ(ResolveTarget(target).status().code(), absl::StatusCode::kInvalidArgument) << target;
  }
}

}  // namespace
}  // namespace pdserve::router
