#include "collector/service.h"

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "absl/strings/str_cat.h"
#include "tests/collector/test_findings.h"
#include "tokenwatch/v1/collector.grpc.pb.h"

namespace tokenwatch::collector {
namespace {

using ::testing::HasSubstr;
using testing::TestFinding;
using testing::TestUuid;
using tokenwatch::v1::Finding;
using tokenwatch::v1::ReportRequest;
using tokenwatch::v1::ReportResponse;

using Stream = grpc::ClientReaderWriter<ReportRequest, ReportResponse>;

ReportRequest Hello(const std::string& node = "node-a", const std::string& agent = "agent-1") {
  ReportRequest r;
  r.mutable_hello()->set_node(node);
  r.mutable_hello()->set_agent_id(agent);
  r.mutable_hello()->set_version("test");
  return r;
}

ReportRequest Sequenced(uint64_t seq, const Finding& f) {
  ReportRequest r;
  r.mutable_finding()->set_sequence(seq);
  *r.mutable_finding()->mutable_finding() = f;
  return r;
}

// Runs the real service on 127.0.0.1:0 over a temporary database.
class CollectorServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tw-service-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto store = FindingStore::Open(dir_ + "/collector.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    service_ = std::make_unique<CollectorService>(store_.get());
    auto running = StartServer("127.0.0.1:0", service_.get());
    ASSERT_TRUE(running.ok()) << running.status();
    server_ = std::move(running->server);
    ASSERT_GT(running->port, 0);
    stub_ = tokenwatch::v1::Collector::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", running->port), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_.reset();
    service_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  static void SetDeadline(grpc::ClientContext* ctx) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  }

  // Reads acks until one reaches `want`; fails on a stream end or an ack that goes backwards.
  static void ExpectAck(Stream* stream, uint64_t want) {
    ReportResponse resp;
    uint64_t last = 0;
    while (stream->Read(&resp)) {
      ASSERT_TRUE(resp.has_ack());
      ASSERT_GE(resp.ack().sequence(), last) << "acks must not go backwards";
      ASSERT_LE(resp.ack().sequence(), want) << "acked beyond what was sent";
      last = resp.ack().sequence();
      if (last == want) return;
    }
    FAIL() << "stream ended before ack " << want << " (last ack " << last << ")";
  }

  std::vector<Finding> List(tokenwatch::v1::ListFindingsRequest request = {}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    tokenwatch::v1::ListFindingsResponse resp;
    grpc::Status status = stub_->ListFindings(&ctx, request, &resp);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return {resp.findings().begin(), resp.findings().end()};
  }

  // Sends hello and `request`, then expects the stream to fail with INVALID_ARGUMENT.
  grpc::Status SendExpectingError(const ReportRequest& request) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    auto stream = stub_->Report(&ctx);
    stream->Write(Hello());
    stream->Write(request);
    stream->WritesDone();
    ReportResponse resp;
    while (stream->Read(&resp)) {
    }
    return stream->Finish();
  }

  std::string dir_;
  std::unique_ptr<FindingStore> store_;
  std::unique_ptr<CollectorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<tokenwatch::v1::Collector::Stub> stub_;
};

TEST_F(CollectorServiceTest, StreamedFindingsAreAckedAndListable) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto stream = stub_->Report(&ctx);
  ASSERT_TRUE(stream->Write(Hello()));
  absl::Time start = absl::Now();
  std::vector<Finding> sent;
  for (uint64_t seq = 1; seq <= 5; ++seq) {
    sent.push_back(TestFinding(static_cast<uint32_t>(seq)));
    ASSERT_TRUE(stream->Write(Sequenced(seq, sent.back())));
  }
  ExpectAck(stream.get(), 5);
  // The agent's spool depends on prompt acks; allow generous slack for a loaded CI machine.
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());

  std::vector<Finding> listed = List();
  EXPECT_EQ(listed.size(), 5u);
  // Acked means stored: every acked finding is there in full.
  grpc::ClientContext get_ctx;
  SetDeadline(&get_ctx);
  tokenwatch::v1::GetFindingRequest get;
  get.set_id(TestUuid(3));
  Finding got;
  ASSERT_TRUE(stub_->GetFinding(&get_ctx, get, &got).ok());
  EXPECT_EQ(got.process().exe(), "/bin/cat");
  // The collector stores the agent's own bytes of the finding: they must be that finding.
  EXPECT_EQ(got.SerializeAsString(), sent[2].SerializeAsString());
}

TEST_F(CollectorServiceTest, AcksOnlyTheContiguousRun) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto stream = stub_->Report(&ctx);
  ASSERT_TRUE(stream->Write(Hello()));
  // A resumed agent starts wherever its spool starts.
  ASSERT_TRUE(stream->Write(Sequenced(10, TestFinding(10))));
  ExpectAck(stream.get(), 10);
  ASSERT_TRUE(stream->Write(Sequenced(12, TestFinding(12))));
  ASSERT_TRUE(stream->Write(Sequenced(11, TestFinding(11))));
  // 12 alone must not be acked (11 was missing); once 11 arrives, the ack jumps to 12.
  ReportResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.ack().sequence(), 12u);
  // A re-send of an acked sequence is answered with the current ack.
  ASSERT_TRUE(stream->Write(Sequenced(10, TestFinding(10))));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.ack().sequence(), 12u);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(List().size(), 3u);
}

TEST_F(CollectorServiceTest, StreamWithoutHelloIsRejected) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto stream = stub_->Report(&ctx);
  stream->Write(Sequenced(1, TestFinding(1)));
  stream->WritesDone();
  ReportResponse resp;
  EXPECT_FALSE(stream->Read(&resp));
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("Hello"));
  EXPECT_TRUE(List().empty());
}

TEST_F(CollectorServiceTest, HelloWithoutAgentIdIsRejected) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto stream = stub_->Report(&ctx);
  stream->Write(Hello("node-a", ""));
  stream->WritesDone();
  ReportResponse resp;
  EXPECT_FALSE(stream->Read(&resp));
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("agent_id"));
}

TEST_F(CollectorServiceTest, InvalidFindingsAreRejectedAndNotStored) {
  Finding bad_uuid = TestFinding(1);
  bad_uuid.set_id("1234");
  Finding bad_rule = TestFinding(2);
  bad_rule.set_rule_id("TWX");
  Finding huge = TestFinding(3);
  huge.mutable_process()->add_argv(std::string(64 * 1024, 'A'));
  struct Case {
    Finding finding;
    std::string field;
  };
  for (const Case& c : {Case{bad_uuid, "finding.id"}, Case{bad_rule, "finding.rule_id"},
                        Case{huge, "finding.process.argv[2]"}}) {
    grpc::Status status = SendExpectingError(Sequenced(1, c.finding));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field;
    EXPECT_THAT(status.error_message(), HasSubstr(c.field));
  }
  EXPECT_TRUE(List().empty());
  EXPECT_EQ(store_->Get(TestUuid(2)).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CollectorServiceTest, OversizedMessageIsRefused) {
  Finding f = TestFinding(1);
  for (int i = 0; i < 1100; ++i) f.add_mitre(std::string(4096, 'x'));  // > 4 MiB on the wire
  grpc::Status status = SendExpectingError(Sequenced(1, f));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(List().empty());
}

TEST_F(CollectorServiceTest, FindingsBeforeAnInvalidOneStayStoredAndAcked) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto stream = stub_->Report(&ctx);
  stream->Write(Hello());
  stream->Write(Sequenced(1, TestFinding(1)));
  Finding bad = TestFinding(2);
  bad.set_count(0);
  stream->Write(Sequenced(2, bad));
  stream->WritesDone();
  ReportResponse resp;
  uint64_t last_ack = 0;
  while (stream->Read(&resp)) last_ack = resp.ack().sequence();
  EXPECT_EQ(last_ack, 1u);
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_EQ(List().size(), 1u);
}

TEST_F(CollectorServiceTest, ClientCancellingMidStreamLeavesServerServing) {
  for (int round = 0; round < 5; ++round) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    auto stream = stub_->Report(&ctx);
    stream->Write(Hello());
    stream->Write(Sequenced(1, TestFinding(100 + round)));
    if (round % 2 == 0) {
      ctx.TryCancel();
    } else {
      // Vanish without WritesDone or Finish reading.
      stream->Write(Sequenced(2, TestFinding(200 + round)));
      ctx.TryCancel();
    }
    stream->Finish();
  }
  // A fresh stream and a query still work.
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto stream = stub_->Report(&ctx);
  ASSERT_TRUE(stream->Write(Hello()));
  ASSERT_TRUE(stream->Write(Sequenced(1, TestFinding(1))));
  ExpectAck(stream.get(), 1);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(store_->Get(TestUuid(1)).ok());
  List();
}

TEST_F(CollectorServiceTest, ResentFindingIsStoredOnceAndGrowsCount) {
  Finding f = TestFinding(1);
  for (int attempt = 0; attempt < 2; ++attempt) {
    // The agent lost our ack and re-sends on a new stream (with a new sequence).
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    auto stream = stub_->Report(&ctx);
    stream->Write(Hello());
    stream->Write(Sequenced(attempt + 1, f));
    ExpectAck(stream.get(), attempt + 1);
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }
  ASSERT_EQ(List().size(), 1u);

  f.set_count(5);
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto stream = stub_->Report(&ctx);
  stream->Write(Hello());
  stream->Write(Sequenced(3, f));
  ExpectAck(stream.get(), 3);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  std::vector<Finding> listed = List();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].count(), 5u);
}

TEST_F(CollectorServiceTest, ListFindingsFiltersAndGetFindingErrors) {
  Finding a = TestFinding(1);
  Finding b = TestFinding(2);
  b.set_rule_id("TW011");
  b.set_severity(tokenwatch::v1::SEVERITY_MEDIUM);
  ASSERT_TRUE(store_->Upsert(a).ok());
  ASSERT_TRUE(store_->Upsert(b).ok());

  tokenwatch::v1::ListFindingsRequest by_rule;
  by_rule.set_rule_id("TW011");
  std::vector<Finding> listed = List(by_rule);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].id(), b.id());
  tokenwatch::v1::ListFindingsRequest by_severity;
  by_severity.set_min_severity(tokenwatch::v1::SEVERITY_HIGH);
  listed = List(by_severity);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].id(), a.id());

  tokenwatch::v1::GetFindingRequest get;
  Finding out;
  get.set_id("nope");
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(stub_->GetFinding(&ctx, get, &out).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  get.set_id(TestUuid(99));
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(stub_->GetFinding(&ctx, get, &out).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  tokenwatch::v1::ListFindingsRequest bad_severity;
  bad_severity.set_min_severity(static_cast<tokenwatch::v1::Severity>(42));
  {
    grpc::ClientContext ctx;
    tokenwatch::v1::ListFindingsResponse resp;
    EXPECT_EQ(stub_->ListFindings(&ctx, bad_severity, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
}

TEST_F(CollectorServiceTest, AGapLetsAcksMovePastSequencesTheAgentGaveUpOn) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto stream = stub_->Report(&ctx);
  ASSERT_TRUE(stream->Write(Hello()));
  ASSERT_TRUE(stream->Write(Sequenced(1, TestFinding(1))));
  ExpectAck(stream.get(), 1);
  // 2..5 were lost in the agent's spool; without the gap, 6 could never be acked.
  ASSERT_TRUE(stream->Write(Sequenced(6, TestFinding(6))));
  ReportRequest gap;
  gap.mutable_gap()->set_through(5);
  ASSERT_TRUE(stream->Write(gap));
  ExpectAck(stream.get(), 6);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(List().size(), 2u);
}

TEST_F(CollectorServiceTest, ManyConcurrentStreamsAreAllStoredAndAcked) {
  constexpr int kStreams = 4;
  constexpr uint64_t kPerStream = 500;
  std::vector<std::thread> agents;
  for (int a = 0; a < kStreams; ++a) {
    agents.emplace_back([&, a] {
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      auto stream = stub_->Report(&ctx);
      ASSERT_TRUE(stream->Write(Hello("node-a", absl::StrCat("agent-", a))));
      for (uint64_t seq = 1; seq <= kPerStream; ++seq) {
        ASSERT_TRUE(stream->Write(
            Sequenced(seq, TestFinding(static_cast<uint32_t>(a * 100000 + seq)))));
      }
      ExpectAck(stream.get(), kPerStream);
      stream->WritesDone();
      EXPECT_TRUE(stream->Finish().ok());
    });
  }
  for (std::thread& t : agents) t.join();
  tokenwatch::v1::ListFindingsRequest all;
  all.set_limit(10000);
  EXPECT_EQ(List(all).size(), kStreams * kPerStream);
}

TEST_F(CollectorServiceTest, ListFindingsPagesThroughEverythingOnceNewestFirst) {
  const absl::Time base = absl::Now() - absl::Hours(1);
  for (uint32_t i = 0; i < 250; ++i) {
    Finding f = TestFinding(i, base + absl::Seconds(i / 2));  // pairs share a time
    if (i % 5 == 0) f.mutable_process()->mutable_pod()->set_name("odd-pod");
    ASSERT_TRUE(store_->Upsert(f).ok());
  }
  tokenwatch::v1::ListFindingsRequest request;
  request.set_limit(100);
  std::vector<Finding> all;
  int pages = 0;
  for (;;) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    tokenwatch::v1::ListFindingsResponse resp;
    ASSERT_TRUE(stub_->ListFindings(&ctx, request, &resp).ok());
    ++pages;
    all.insert(all.end(), resp.findings().begin(), resp.findings().end());
    if (resp.next_page_token().empty()) break;
    request.set_page_token(resp.next_page_token());
  }
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(all.size(), 250u);
  std::set<std::string> ids;
  for (size_t i = 0; i < all.size(); ++i) {
    ids.insert(all[i].id());
    if (i > 0) {
      EXPECT_GE(all[i - 1].last_seen().seconds(), all[i].last_seen().seconds());
    }
  }
  EXPECT_EQ(ids.size(), 250u) << "no finding twice across pages";

  tokenwatch::v1::ListFindingsRequest by_pod;
  by_pod.set_pod("odd-pod");
  by_pod.set_limit(1000);
  EXPECT_EQ(List(by_pod).size(), 50u);
  by_pod.set_pod("api-0");  // the token owner's pod, in every test finding
  EXPECT_EQ(List(by_pod).size(), 250u);

  tokenwatch::v1::ListFindingsRequest window;
  window.set_limit(1000);
  testing::SetTime(window.mutable_since(), base + absl::Seconds(10));
  testing::SetTime(window.mutable_until(), base + absl::Seconds(20));
  EXPECT_EQ(List(window).size(), 20u) << "since is inclusive, until exclusive";

  tokenwatch::v1::ListFindingsRequest forged;
  forged.set_page_token("not-a-token");
  grpc::ClientContext ctx;
  tokenwatch::v1::ListFindingsResponse resp;
  EXPECT_EQ(stub_->ListFindings(&ctx, forged, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(CollectorServiceTest, WatchFindingsStreamsEachNewOrGrownFindingThatMatches) {
  grpc::ClientContext watch_ctx;
  SetDeadline(&watch_ctx);
  tokenwatch::v1::WatchFindingsRequest filter;
  filter.set_rule_id("TW002");
  auto watch = stub_->WatchFindings(&watch_ctx, filter);
  grpc::ClientContext other_ctx;
  SetDeadline(&other_ctx);
  tokenwatch::v1::WatchFindingsRequest other_filter;
  other_filter.set_node("another-node");
  auto other = stub_->WatchFindings(&other_ctx, other_filter);
  absl::SleepFor(absl::Milliseconds(200));  // let the subscriptions register

  const Finding two = TestFinding(2);
  Finding grown = two;
  grown.set_count(3);
  Finding other_rule = TestFinding(4);
  other_rule.set_rule_id("TW001");
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    auto stream = stub_->Report(&ctx);
    ASSERT_TRUE(stream->Write(Hello()));
    ASSERT_TRUE(stream->Write(Sequenced(1, TestFinding(1))));
    ASSERT_TRUE(stream->Write(Sequenced(2, two)));
    ASSERT_TRUE(stream->Write(Sequenced(3, two)));  // identical re-send: not news
    ASSERT_TRUE(stream->Write(Sequenced(4, other_rule)));       // filtered out
    ASSERT_TRUE(stream->Write(Sequenced(5, grown)));            // a fold that grew: news
    ExpectAck(stream.get(), 5);
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }
  std::vector<std::pair<std::string, uint64_t>> seen;
  Finding f;
  while (seen.size() < 3 && watch->Read(&f)) seen.emplace_back(f.id(), f.count());
  EXPECT_EQ(seen, (std::vector<std::pair<std::string, uint64_t>>{
                      {TestUuid(1), 1}, {TestUuid(2), 1}, {TestUuid(2), 3}}));
  watch_ctx.TryCancel();
  while (watch->Read(&f)) ADD_FAILURE() << "unexpected extra finding " << f.id();
  watch->Finish();
  other_ctx.TryCancel();
  EXPECT_FALSE(other->Read(&f)) << "a watcher for another node got " << f.id();
  other->Finish();
}

TEST(StartServer, FailsOnAPortInUse) {
  char tmpl[] = "/tmp/tw-service-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  auto store = FindingStore::Open(std::string(tmpl) + "/c.db");
  ASSERT_TRUE(store.ok());
  CollectorService service(store->get());
  auto first = StartServer("127.0.0.1:0", &service);
  ASSERT_TRUE(first.ok());
  CollectorService other(store->get());
  auto second = StartServer(absl::StrCat("127.0.0.1:", first->port), &other);
  EXPECT_FALSE(second.ok());
  first->server->Shutdown();
  std::filesystem::remove_all(tmpl);
}

}  // namespace
}  // namespace tokenwatch::collector
