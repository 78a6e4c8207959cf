// The agent's delivery client against the real collector service, in-process
// on loopback.
#include "agent/export/collector_client.h"

#include <unistd.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/detect/finding_builder.h"
#include "collector/service.h"
#include "collector/store.h"
#include "gtest/gtest.h"

namespace tokenwatch::exporting {
namespace {

v1::Finding MakeFinding(int i) {
  v1::Finding f;
  f.set_id(detect::NewUuid());
  f.set_node("node-1");
  *f.mutable_time() = detect::ToTimestamp(absl::Now());
  *f.mutable_last_seen() = f.time();
  f.set_count(1);
  f.set_rule_id("TW001");
  f.set_rule_name("token-read-unexpected");
  f.set_severity(v1::SEVERITY_HIGH);
  f.set_summary(absl::StrCat("finding ", i));
  return f;
}

class CollectorClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = absl::StrCat(::testing::TempDir(), "/client-", getpid(), "-", rand(), ".db");
    StartCollector("127.0.0.1:0");
  }
  void TearDown() override { StopCollector(); }

  void StartCollector(const std::string& listen) {
    auto store = collector::FindingStore::Open(db_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    service_ = std::make_unique<collector::CollectorService>(store_.get());
    auto running = collector::StartServer(listen, service_.get());
    ASSERT_TRUE(running.ok()) << running.status();
    server_ = std::move(running->server);
    port_ = running->port;
  }
  void StopCollector() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    server_.reset();
    service_.reset();
    store_.reset();
  }
  size_t Stored() {
    collector::FindingQuery q;
    q.limit = 10000;
    auto list = store_->List(q);
    return list.ok() ? list->size() : 0;
  }
  CollectorClient::Options ClientOptions() {
    CollectorClient::Options o;
    o.address = absl::StrCat("127.0.0.1:", port_);
    o.node = "node-1";
    o.agent_id = "agent-1";
    o.version = "test";
    o.min_backoff = absl::Milliseconds(50);
    o.max_backoff = absl::Milliseconds(200);
    return o;
  }
  bool WaitFor(const std::function<bool()>& cond) {
    for (int i = 0; i < 100; ++i) {
      if (cond()) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return cond();
  }

  std::string db_;
  std::unique_ptr<collector::FindingStore> store_;
  std::unique_ptr<collector::CollectorService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(CollectorClientTest, DeliversAndIsAcked) {
  CollectorClient client(ClientOptions());
  client.Start();
  for (int i = 0; i < 50; ++i) client.Enqueue(MakeFinding(i));
  EXPECT_TRUE(WaitFor([&] { return client.stats().acked == 50; }));
  EXPECT_EQ(client.stats().queue_depth, 0u);
  EXPECT_EQ(Stored(), 50u);
  client.Stop();
}

TEST_F(CollectorClientTest, KeepsFindingsWhileTheCollectorIsDownAndResendsThem) {
  int port = port_;
  StopCollector();
  CollectorClient client(ClientOptions());
  client.Start();
  for (int i = 0; i < 10; ++i) client.Enqueue(MakeFinding(i));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(client.stats().queue_depth, 10u);
  EXPECT_FALSE(client.stats().connected);
  StartCollector(absl::StrCat("127.0.0.1:", port));
  EXPECT_TRUE(WaitFor([&] { return client.stats().queue_depth == 0; }));
  EXPECT_EQ(Stored(), 10u);
  EXPECT_GE(client.stats().send_failures, 1u);
  client.Stop();
}

TEST_F(CollectorClientTest, AReSentFoldWithAHigherCountUpdatesTheStoredFinding) {
  CollectorClient client(ClientOptions());
  client.Start();
  v1::Finding f = MakeFinding(1);
  client.Enqueue(f);
  f.set_count(7);
  client.Enqueue(f);
  EXPECT_TRUE(WaitFor([&] { return client.stats().acked == 2; }));
  auto stored = store_->Get(f.id());
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->count(), 7u);
  EXPECT_EQ(Stored(), 1u);
  client.Stop();
}

TEST_F(CollectorClientTest, BoundedQueueDropsTheOldestAndCounts) {
  StopCollector();
  CollectorClient::Options o = ClientOptions();
  o.max_queue = 5;
  CollectorClient client(o);
  for (int i = 0; i < 8; ++i) client.Enqueue(MakeFinding(i));
  EXPECT_EQ(client.stats().queue_depth, 5u);
  EXPECT_EQ(client.stats().dropped, 3u);
}

}  // namespace
}  // namespace tokenwatch::exporting
