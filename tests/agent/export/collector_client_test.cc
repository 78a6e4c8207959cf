// The agent's delivery client against the real collector service, in-process on loopback:
// at-least-once delivery through the durable spool, replay after restarts, loss reporting, TLS.
#include "agent/export/collector_client.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/detect/finding_builder.h"
#include "collector/service.h"
#include "collector/store.h"
#include "gtest/gtest.h"

namespace tokenwatch::exporting {
namespace {

v1::Finding MakeFinding(int i, const std::string& node = "node-1") {
  v1::Finding f;
  f.set_id(detect::NewUuid());
  f.set_node(node);
  *f.mutable_time() = detect::ToTimestamp(absl::Now());
  *f.mutable_last_seen() = f.time();
  f.set_count(1);
  f.set_rule_id("TW001");
  f.set_rule_name("token-read-unexpected");
  f.set_severity(v1::SEVERITY_HIGH);
  f.set_summary(absl::StrCat("finding ", i));
  return f;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class CollectorClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tw-client-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    StartCollector("127.0.0.1:0");
  }
  void TearDown() override {
    StopCollector();
    std::filesystem::remove_all(dir_);
  }

  void StartCollector(const std::string& listen, const collector::ServerTls* tls = nullptr) {
    auto store = collector::FindingStore::Open(dir_ + "/collector.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    collector::CollectorService::Options options;
    options.verify_node_names = tls != nullptr && !tls->client_ca.empty();
    service_ = std::make_unique<collector::CollectorService>(store_.get(), options);
    auto running = collector::StartServer(listen, service_.get(), tls);
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
  std::vector<v1::Finding> Stored() {
    collector::FindingQuery q;
    q.limit = 10000;
    auto list = store_->List(q);
    return list.ok() ? *list : std::vector<v1::Finding>();
  }
  std::set<std::string> StoredSummaries() {
    std::set<std::string> out;
    for (const v1::Finding& f : Stored()) out.insert(f.summary());
    return out;
  }
  CollectorClient::Options ClientOptions() {
    CollectorClient::Options o;
    o.address = absl::StrCat("127.0.0.1:", port_);
    o.node = "node-1";
    o.agent_id = "agent-1";
    o.version = "test";
    o.spool.dir = dir_ + "/spool";
    o.min_backoff = absl::Milliseconds(50);
    o.max_backoff = absl::Milliseconds(200);
    return o;
  }
  std::unique_ptr<CollectorClient> Client(CollectorClient::Options o) {
    auto client = CollectorClient::Create(std::move(o));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }
  bool WaitFor(const std::function<bool()>& cond) {
    for (int i = 0; i < 200; ++i) {
      if (cond()) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return cond();
  }

  std::string dir_;
  std::unique_ptr<collector::FindingStore> store_;
  std::unique_ptr<collector::CollectorService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(CollectorClientTest, DeliversAndIsAcked) {
  auto client = Client(ClientOptions());
  client->Start();
  for (int i = 0; i < 50; ++i) client->Enqueue(MakeFinding(i));
  EXPECT_TRUE(WaitFor([&] { return client->stats().acked == 50; }));
  EXPECT_EQ(client->stats().queue_depth, 0u);
  EXPECT_EQ(Stored().size(), 50u);
  EXPECT_EQ(client->stats().spool_bytes, 0u) << "acked segments are deleted";
  client->Stop();
}

TEST_F(CollectorClientTest, KeepsFindingsWhileTheCollectorIsDownAndResendsThem) {
  int port = port_;
  StopCollector();
  auto client = Client(ClientOptions());
  client->Start();
  for (int i = 0; i < 10; ++i) client->Enqueue(MakeFinding(i));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(client->stats().queue_depth, 10u);
  EXPECT_GT(client->stats().spool_bytes, 0u) << "unacked findings are on disk";
  EXPECT_FALSE(client->stats().connected);
  StartCollector(absl::StrCat("127.0.0.1:", port));
  EXPECT_TRUE(WaitFor([&] { return client->stats().queue_depth == 0; }));
  EXPECT_EQ(Stored().size(), 10u);
  EXPECT_GE(client->stats().send_failures, 1u);
  client->Stop();
}

TEST_F(CollectorClientTest, AnAgentRestartReplaysWhatWasNotAcked) {
  int port = port_;
  StopCollector();
  {
    auto client = Client(ClientOptions());
    client->Start();
    for (int i = 0; i < 25; ++i) client->Enqueue(MakeFinding(i));
    client->Stop(absl::ZeroDuration());
  }
  StartCollector(absl::StrCat("127.0.0.1:", port));
  auto client = Client(ClientOptions());
  EXPECT_EQ(client->stats().queue_depth, 25u);
  client->Start();
  EXPECT_TRUE(WaitFor([&] { return Stored().size() == 25u; }));
  EXPECT_TRUE(WaitFor([&] { return client->stats().queue_depth == 0; }));
  client->Stop();
}

TEST_F(CollectorClientTest, AReSentFoldWithAHigherCountUpdatesTheStoredFinding) {
  auto client = Client(ClientOptions());
  client->Start();
  v1::Finding f = MakeFinding(1);
  client->Enqueue(f);
  f.set_count(7);
  client->Enqueue(f);
  EXPECT_TRUE(WaitFor([&] { return client->stats().acked == 2; }));
  auto stored = store_->Get(f.id());
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->count(), 7u);
  EXPECT_EQ(Stored().size(), 1u);
  client->Stop();
}

TEST_F(CollectorClientTest, AFullSpoolDropsTheOldestAndReportsTheLossOnceDeliveryResumes) {
  int port = port_;
  StopCollector();
  CollectorClient::Options o = ClientOptions();
  o.spool.max_bytes = 16384;
  o.spool.segment_bytes = 2048;
  auto client = Client(o);
  client->Start();
  for (int i = 0; i < 300; ++i) client->Enqueue(MakeFinding(i));
  ASSERT_TRUE(WaitFor([&] { return client->stats().spool_dropped > 0; }));
  absl::SleepFor(absl::Milliseconds(300));
  const uint64_t dropped = client->stats().spool_dropped;
  EXPECT_LE(client->stats().spool_bytes, 16384u);

  StartCollector(absl::StrCat("127.0.0.1:", port));
  ASSERT_TRUE(WaitFor([&] {
    for (const v1::Finding& f : Stored()) {
      if (f.rule_id() == "TW091") return true;
    }
    return false;
  }));
  ASSERT_TRUE(WaitFor([&] { return client->stats().queue_depth == 0; }));
  std::vector<v1::Finding> stored = Stored();
  // Appending the report itself to the full spool may drop (and report) a few more, so the
  // totals are compared at the end.
  uint64_t reported = 0, reports = 0;
  bool first_names_the_count = false;
  for (const v1::Finding& f : stored) {
    if (f.rule_id() != "TW091") continue;
    ++reports;
    EXPECT_EQ(f.rule_name(), "sensor-findings-dropped");
    EXPECT_EQ(f.severity(), v1::SEVERITY_HIGH);
    EXPECT_EQ(f.node(), "node-1");
    first_names_the_count |=
        f.summary().find(absl::StrCat(dropped, " findings were lost")) != std::string::npos;
    reported += f.count();
  }
  EXPECT_TRUE(first_names_the_count) << "no report says " << dropped << " were lost";
  EXPECT_EQ(reported, client->stats().spool_dropped) << "every drop is reported";
  EXPECT_EQ(reports, client->stats().drop_reports);
  // Distinct summaries of the findings themselves (there may be more than
  // one TW091 report when appending a report dropped more).
  std::set<std::string> summaries;
  for (const v1::Finding& f : stored) {
    if (f.rule_id() != "TW091") summaries.insert(f.summary());
  }
  EXPECT_EQ(summaries.size(), stored.size() - reports) << "no finding stored twice";
  EXPECT_GE(stored.size() - reports + reported, 300u) << "every finding is stored or reported";
  EXPECT_EQ(stored.size() - reports, 300 - dropped) << "every finding not dropped arrives";
  EXPECT_TRUE(summaries.count("finding 299")) << "the newest survive";
  EXPECT_FALSE(summaries.count("finding 0")) << "the oldest are dropped";
  client->Stop();
}

// What an agent killed with SIGKILL leaves behind: the spool's own files, nothing else.
// The spool persists its loss counts as they happen (spool_test kills a child process to
// show it), so an agent process that ends here without a report is the SIGKILL case.
TEST_F(CollectorClientTest, LossesFromBeforeARestartAreReportedAfterIt) {
  for (bool leave_unacked : {true, false}) {
    SCOPED_TRACE(leave_unacked ? "findings left to send" : "nothing else to send");
    std::filesystem::remove_all(dir_ + "/spool");
    std::set<std::string> earlier;  // the first round's reports
    for (const v1::Finding& f : Stored()) earlier.insert(f.id());
    uint64_t dropped = 0;
    {
      Spool::Options o = ClientOptions().spool;
      o.max_bytes = 16384;
      o.segment_bytes = 2048;
      auto spool = Spool::Open(o);
      ASSERT_TRUE(spool.ok()) << spool.status();
      for (int i = 0; i < 200; ++i) ASSERT_TRUE((*spool)->Append(MakeFinding(i)).ok());
      if (!leave_unacked) (*spool)->Ack((*spool)->stats().last_sequence);
      dropped = (*spool)->stats().dropped_total;
      ASSERT_GT(dropped, 0u);
    }
    CollectorClient::Options o = ClientOptions();
    o.spool.max_bytes = 16384;
    o.spool.segment_bytes = 2048;
    auto client = Client(o);
    client->Start();
    uint64_t reported = 0;
    ASSERT_TRUE(WaitFor([&] {
      reported = 0;
      for (const v1::Finding& f : Stored()) {
        if (f.rule_id() == "TW091" && earlier.count(f.id()) == 0 &&
            f.summary().find(absl::StrCat(dropped, " findings were lost")) != std::string::npos) {
          reported += f.count();
        }
      }
      return reported > 0;
    })) << "no TW091 for the " << dropped << " findings dropped before the restart";
    EXPECT_EQ(reported, dropped);
    client->Stop();
  }
}

// The memory queue overflows while the spool cannot take findings (here: the client never
// started). The count goes into the spool with the findings that did fit, so a later run of
// the agent reports it: the client's own memory of it is gone.
TEST_F(CollectorClientTest, MemoryQueueOverflowsAreReportedAfterARestart) {
  CollectorClient::Options o = ClientOptions();
  o.max_queue = 10;
  {
    auto client = Client(o);
    for (int i = 0; i < 25; ++i) client->Enqueue(MakeFinding(i));
    EXPECT_EQ(client->stats().dropped, 15u);
    client->Stop();  // spools what the queue still holds
  }
  auto client = Client(o);
  client->Start();
  ASSERT_TRUE(WaitFor([&] { return client->stats().acked >= 11; }));
  uint64_t reported = 0;
  std::set<std::string> summaries;
  for (const v1::Finding& f : Stored()) {
    if (f.rule_id() == "TW091") {
      reported += f.count();
      EXPECT_NE(f.summary().find("15 findings were lost"), std::string::npos) << f.summary();
    } else {
      summaries.insert(f.summary());
    }
  }
  EXPECT_EQ(reported, 15u) << "every overflow is reported, once";
  EXPECT_EQ(summaries.size(), 10u);
  EXPECT_TRUE(summaries.count("finding 24")) << "the newest survive";
  EXPECT_FALSE(summaries.count("finding 14")) << "the oldest are dropped";
  client->Stop();
}

TEST_F(CollectorClientTest, ADamagedSpoolRecordIsSkippedAndReportedAndTheRestArrive) {
  int port = port_;
  StopCollector();
  {
    auto client = Client(ClientOptions());
    client->Start();
    for (int i = 0; i < 10; ++i) client->Enqueue(MakeFinding(i));
    client->Stop(absl::ZeroDuration());
  }
  std::string segment;
  for (const auto& e : std::filesystem::directory_iterator(dir_ + "/spool")) {
    if (e.path().extension() == ".seg") segment = e.path().string();
  }
  ASSERT_FALSE(segment.empty());
  std::string bytes = ReadFile(segment);
  // Damage a byte inside the fifth record's payload: "finding 4".
  const size_t at = bytes.find("finding 4");
  ASSERT_NE(at, std::string::npos);
  {
    std::fstream file(segment, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(static_cast<std::streamoff>(at + 3));
    file.put('#');
  }

  StartCollector(absl::StrCat("127.0.0.1:", port));
  auto client = Client(ClientOptions());
  EXPECT_EQ(client->stats().spool_corrupt, 1u);
  client->Start();
  ASSERT_TRUE(WaitFor([&] { return Stored().size() == 10u; }))
      << "9 findings and the TW091 report, got " << Stored().size();
  std::set<std::string> summaries = StoredSummaries();
  EXPECT_FALSE(summaries.count("finding 4"));
  EXPECT_TRUE(summaries.count("finding 3") && summaries.count("finding 5"));
  bool reported = false;
  for (const v1::Finding& f : Stored()) {
    if (f.rule_id() == "TW091") {
      reported = true;
      EXPECT_EQ(f.count(), 1u);
    }
  }
  EXPECT_TRUE(reported);
  client->Stop();
}

TEST(CollectorClientCreate, FailsOnAnUnreadableTlsFileOrSpool) {
  CollectorClient::Options o;
  o.address = "127.0.0.1:1";
  o.spool.dir = "/tmp/tw-client-create-test-spool";
  o.tls_ca = "/nonexistent/ca.pem";
  auto client = CollectorClient::Create(o);
  ASSERT_FALSE(client.ok());
  EXPECT_NE(client.status().message().find("/nonexistent/ca.pem"), std::string::npos);
  o.tls_ca.clear();
  o.spool.dir = "/proc/tw-nope/spool";
  EXPECT_FALSE(CollectorClient::Create(o).ok());
}

// TLS with client certificates, made at test time by collector/tls/make-test-ca.sh.
class CollectorClientTlsTest : public CollectorClientTest {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tw-client-tls-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ca_ = dir_ + "/ca";
    const std::string cmd = absl::StrCat("sh " TW_SOURCE_DIR "/collector/tls/make-test-ca.sh ",
                                         ca_, " node-1 node-2 >/dev/null");
    ASSERT_EQ(system(cmd.c_str()), 0) << cmd;
    tls_.cert_chain = ReadFile(ca_ + "/collector.pem");
    tls_.private_key = ReadFile(ca_ + "/collector.key");
    tls_.client_ca = ReadFile(ca_ + "/ca.pem");
    StartCollector("127.0.0.1:0", &tls_);
  }

  CollectorClient::Options TlsOptions(const std::string& cert_name) {
    CollectorClient::Options o = ClientOptions();
    o.tls_ca = ca_ + "/ca.pem";
    if (!cert_name.empty()) {
      o.tls_cert = ca_ + "/" + cert_name + ".pem";
      o.tls_key = ca_ + "/" + cert_name + ".key";
    }
    return o;
  }

  std::string ca_;
  collector::ServerTls tls_;
};

TEST_F(CollectorClientTlsTest, AClientWithItsNodesCertificateDelivers) {
  auto client = Client(TlsOptions("node-1"));
  client->Start();
  for (int i = 0; i < 5; ++i) client->Enqueue(MakeFinding(i));
  EXPECT_TRUE(WaitFor([&] { return client->stats().acked == 5; }));
  EXPECT_EQ(Stored().size(), 5u);
  client->Stop();
}

TEST_F(CollectorClientTlsTest, AClientWithoutACertificateIsRefused) {
  auto client = Client(TlsOptions(""));
  client->Start();
  client->Enqueue(MakeFinding(1));
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(client->stats().acked, 0u);
  EXPECT_GE(client->stats().send_failures, 1u);
  EXPECT_TRUE(Stored().empty());
  client->Stop(absl::ZeroDuration());
}

TEST_F(CollectorClientTlsTest, AClientClaimingAnotherNodesNameIsRefused) {
  // node-2's certificate, but the Hello says node-1.
  auto client = Client(TlsOptions("node-2"));
  client->Start();
  client->Enqueue(MakeFinding(1));
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(client->stats().acked, 0u);
  EXPECT_GE(client->stats().send_failures, 1u);
  EXPECT_TRUE(Stored().empty());
  client->Stop(absl::ZeroDuration());
}

}  // namespace
}  // namespace tokenwatch::exporting
