// LoadWatch behind a real gRPC server on loopback: what a WatchLoad client sees.
#include "serving/load_watch.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "pdserve/v1/worker.grpc.pb.h"
#include "rpc/server.h"

namespace pdserve::serving {
namespace {

// A service with WatchLoad only, over a load the test sets.
class WatchOnly final
    : public v1::PrefillWorker::WithCallbackMethod_WatchLoad<v1::PrefillWorker::Service> {
 public:
  explicit WatchOnly(LoadWatch* watch) : watch_(watch) {}
  grpc::ServerWriteReactor<v1::WorkerLoad>* WatchLoad(grpc::CallbackServerContext* context,
                                                      const v1::WatchLoadRequest*) override {
    return watch_->Watch(context);
  }

 private:
  LoadWatch* watch_;
};

class LoadWatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = rpc::Server::Start("127.0.0.1:0", {&service_});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::PrefillWorker::NewStub(
        grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(std::chrono::milliseconds(0));
  }

  // Sets the load the worker reports and tells the watch.
  void Set(int queue_depth, bool draining = false) {
    {
      absl::MutexLock lock(&mu_);
      load_.set_queue_depth(queue_depth);
      load_.set_draining(draining);
    }
    watch_.Changed();
  }

  absl::Mutex mu_;
  v1::WorkerLoad load_ ABSL_GUARDED_BY(mu_);
  // Declared before the server: destroyed after it, once every stream has ended.
  LoadWatch watch_{[this] {
    absl::MutexLock lock(&mu_);
    return load_;
  }};
  WatchOnly service_{&watch_};
  std::unique_ptr<rpc::Server> server_;
  std::unique_ptr<v1::PrefillWorker::Stub> stub_;
};

TEST_F(LoadWatchTest, SendsTheLoadAtOnceThenEachChangeButNoRepeats) {
  Set(3);
  grpc::ClientContext context;
  auto reader = stub_->WatchLoad(&context, v1::WatchLoadRequest());
  v1::WorkerLoad load;
  ASSERT_TRUE(reader->Read(&load));
  EXPECT_EQ(load.queue_depth(), 3);
  Set(4);
  ASSERT_TRUE(reader->Read(&load));
  EXPECT_EQ(load.queue_depth(), 4);
  // Changes that change nothing send nothing: the next message is the next real change.
  for (int i = 0; i < 5; ++i) watch_.Changed();
  Set(5);
  ASSERT_TRUE(reader->Read(&load));
  EXPECT_EQ(load.queue_depth(), 5);
  // Draining is the last message; the stream then ends OK.
  Set(5, /*draining=*/true);
  ASSERT_TRUE(reader->Read(&load));
  EXPECT_TRUE(load.draining());
  EXPECT_FALSE(reader->Read(&load));
  EXPECT_TRUE(reader->Finish().ok());
}

TEST_F(LoadWatchTest, EveryWatcherGetsTheLatestAndCancelledOnesAreForgotten) {
  constexpr int kWatchers = 40;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::WorkerLoad>>> readers;
  v1::WorkerLoad load;
  for (int i = 0; i < kWatchers; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(stub_->WatchLoad(contexts.back().get(), v1::WatchLoadRequest()));
    ASSERT_TRUE(readers.back()->Read(&load));
    EXPECT_EQ(load.queue_depth(), 0);
  }
  EXPECT_EQ(watch_.streams(), kWatchers);
  for (int i = 0; i < kWatchers; i += 2) {
    contexts[i]->TryCancel();
    EXPECT_FALSE(readers[i]->Read(&load));
    EXPECT_EQ(readers[i]->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // Many changes in a row: each remaining watcher ends up at the last one, whatever it skipped.
  for (int depth = 1; depth <= 100; ++depth) Set(depth);
  for (int i = 1; i < kWatchers; i += 2) {
    do {
      ASSERT_TRUE(readers[i]->Read(&load));
    } while (load.queue_depth() != 100);
  }
  Set(100, /*draining=*/true);
  for (int i = 1; i < kWatchers; i += 2) {
    ASSERT_TRUE(readers[i]->Read(&load));
    EXPECT_TRUE(load.draining());
    EXPECT_FALSE(readers[i]->Read(&load));
    EXPECT_TRUE(readers[i]->Finish().ok());
  }
  server_->Shutdown(std::chrono::milliseconds(0));  // returns once every stream is done
  EXPECT_EQ(watch_.streams(), 0);
}

TEST_F(LoadWatchTest, AWatcherOfADrainingWorkerGetsOneLoadAndTheEnd) {
  Set(0, /*draining=*/true);
  grpc::ClientContext context;
  auto reader = stub_->WatchLoad(&context, v1::WatchLoadRequest());
  v1::WorkerLoad load;
  ASSERT_TRUE(reader->Read(&load));
  EXPECT_TRUE(load.draining());
  EXPECT_FALSE(reader->Read(&load));
  EXPECT_TRUE(reader->Finish().ok());
}

TEST_F(LoadWatchTest, ServerShutdownEndsOpenStreams) {
  grpc::ClientContext context;
  auto reader = stub_->WatchLoad(&context, v1::WatchLoadRequest());
  v1::WorkerLoad load;
  ASSERT_TRUE(reader->Read(&load));
  server_->Shutdown(std::chrono::milliseconds(0));
  EXPECT_FALSE(reader->Read(&load));
  EXPECT_FALSE(reader->Finish().ok());
  EXPECT_EQ(watch_.streams(), 0);
}

}  // namespace
}  // namespace pdserve::serving
