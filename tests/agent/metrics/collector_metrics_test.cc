// The collector's metrics, counted by the real service over gRPC on loopback.
#include "collector/collector_metrics.h"

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <sstream>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "agent/detect/sensor_findings.h"
#include "collector/service.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "tokenwatch/v1/collector.grpc.pb.h"

namespace tokenwatch::collector {
namespace {

using ::testing::HasSubstr;
using tokenwatch::v1::ReportRequest;
using tokenwatch::v1::ReportResponse;

std::string Expose(const CollectorMetrics& m) {
  std::vector<prometheus::MetricFamily> families;
  for (const auto& c : m.collectables()) {
    auto more = c->Collect();
    families.insert(families.end(), more.begin(), more.end());
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

class CollectorMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tw-collector-metrics-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto store = FindingStore::Open(dir_ + "/collector.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    metrics_ = std::make_unique<CollectorMetrics>(dir_ + "/collector.db");
    CollectorService::Options options;
    options.metrics = metrics_.get();
    service_ = std::make_unique<CollectorService>(store_.get(), options);
    auto running = StartServer("127.0.0.1:0", service_.get());
    ASSERT_TRUE(running.ok()) << running.status();
    server_ = std::move(running->server);
    stub_ = v1::Collector::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", running->port),
                                                       grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_.reset();
    service_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  static ReportRequest Hello() {
    ReportRequest r;
    r.mutable_hello()->set_node("node-a");
    r.mutable_hello()->set_agent_id("agent-1");
    return r;
  }
  static ReportRequest Sequenced(uint64_t seq, const v1::Finding& f) {
    ReportRequest r;
    r.mutable_finding()->set_sequence(seq);
    *r.mutable_finding()->mutable_finding() = f;
    return r;
  }

  std::string dir_;
  std::unique_ptr<FindingStore> store_;
  std::unique_ptr<CollectorMetrics> metrics_;
  std::unique_ptr<CollectorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Collector::Stub> stub_;
};

TEST_F(CollectorMetricsTest, CountsStoredFindingsConnectedAgentsAndTheDatabase) {
  grpc::ClientContext context;
  auto stream = stub_->Report(&context);
  ASSERT_TRUE(stream->Write(Hello()));
  v1::Finding f = detect::BuildSensorEventsLostFinding("node-a", "tracepoint",
                                                       detect::SensorLoss{3, 0}, absl::Now(),
                                                       absl::Now());
  ASSERT_TRUE(stream->Write(Sequenced(1, f)));
  ReportResponse ack;
  ASSERT_TRUE(stream->Read(&ack));
  EXPECT_EQ(ack.ack().sequence(), 1u);

  std::string text = Expose(*metrics_);
  EXPECT_THAT(text, HasSubstr("tokenwatch_collector_findings_received_total 1"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_collector_findings_stored_total 1"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_collector_connected_agents 1"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_collector_ingest_latency_seconds_count 1"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_collector_database_bytes "));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("tokenwatch_collector_database_bytes 0")));

  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  // The reactor is gone once Finish returned and OnDone ran.
  for (int i = 0; i < 100 && Expose(*metrics_).find("connected_agents 0") == std::string::npos;
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_THAT(Expose(*metrics_), HasSubstr("tokenwatch_collector_connected_agents 0"));
}

TEST_F(CollectorMetricsTest, CountsRejectionsByReason) {
  {
    grpc::ClientContext context;
    auto stream = stub_->Report(&context);
    v1::Finding f = detect::BuildSensorEventsLostFinding("node-a", "tracepoint",
                                                         detect::SensorLoss{1, 0}, absl::Now(),
                                                         absl::Now());
    ASSERT_TRUE(stream->Write(Sequenced(1, f)));  // no Hello first
    stream->WritesDone();
    EXPECT_FALSE(stream->Finish().ok());
  }
  {
    grpc::ClientContext context;
    auto stream = stub_->Report(&context);
    ASSERT_TRUE(stream->Write(Hello()));
    v1::Finding bad;  // no id, node, rule...
    bad.set_count(1);
    ASSERT_TRUE(stream->Write(Sequenced(1, bad)));
    stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  std::string text = Expose(*metrics_);
  EXPECT_THAT(text, HasSubstr("tokenwatch_collector_findings_rejected_total{reason=\"protocol\"} 1"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_collector_findings_rejected_total{reason=\"invalid\"} 1"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_collector_findings_received_total 2"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_collector_findings_stored_total 0"));
}

TEST_F(CollectorMetricsTest, EveryTimedMethodHasASeriesBeforeItsFirstCall) {
  // rate() over a series that appears only with the first call misses that call.
  const std::string text = Expose(*metrics_);
  for (const char* method : {"ListFindings", "GetFinding", "UploadProfiles", "ListProfiles"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat("tokenwatch_collector_request_duration_seconds_count{"
                                             "method=\"",
                                             method, "\"} 0")));
  }
}

TEST_F(CollectorMetricsTest, TimesQueriesByMethod) {
  grpc::ClientContext context;
  v1::ListFindingsRequest request;
  v1::ListFindingsResponse response;
  ASSERT_TRUE(stub_->ListFindings(&context, request, &response).ok());
  EXPECT_THAT(Expose(*metrics_),
              HasSubstr("tokenwatch_collector_request_duration_seconds_count{method=\"ListFindings\"} 1"));
}

}  // namespace
}  // namespace tokenwatch::collector
