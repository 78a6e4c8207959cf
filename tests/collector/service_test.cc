#include "collector/service.h"

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <string>

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
  for (uint64_t seq = 1; seq <= 5; ++seq) {
    ASSERT_TRUE(stream->Write(Sequenced(seq, TestFinding(static_cast<uint32_t>(seq)))));
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
