#include "agent/metrics/agent_metrics.h"

#include <regex>
#include <set>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "tests/agent/metrics/sample_metrics.h"

namespace tokenwatch::metrics {
namespace {

using ::testing::HasSubstr;

std::string Expose(const AgentMetrics& m) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, m.registry()->Collect());
  return out.str();
}

TEST(AgentMetrics, ExportsEveryDocumentedFamily) {
  AgentMetrics m("1.2.3", "abc1234", "6.1.0");
  testing::FillAgentMetrics(&m);
  std::string text = Expose(m);
  for (const char* family :
       {"tokenwatch_kernel_records_total", "tokenwatch_kernel_drops_total",
        "tokenwatch_findings_total", "tokenwatch_findings_folded_total",
        "tokenwatch_tokens_watched", "tokenwatch_processes_tracked",
        "tokenwatch_inventory_errors_total", "tokenwatch_hook_mode_info",
        "tokenwatch_probe_attached", "tokenwatch_export_queue_depth",
        "tokenwatch_export_sent_total", "tokenwatch_export_acked_total",
        "tokenwatch_export_send_failures_total", "tokenwatch_export_dropped_total",
        "tokenwatch_collector_connected", "tokenwatch_processing_errors_total",
        "tokenwatch_export_spool_bytes", "tokenwatch_policy_reloads_total",
        "tokenwatch_policy_reload_failures_total", "tokenwatch_apiserver_addresses_watched",
        "tokenwatch_detection_latency_seconds", "tokenwatch_ready", "tokenwatch_build_info",
        "tokenwatch_profile_uploads_total"}) {
    EXPECT_THAT(text, HasSubstr(std::string("# TYPE ") + family + " ")) << family;
  }
  EXPECT_THAT(text, HasSubstr(
                        "tokenwatch_build_info{git_commit=\"abc1234\",kernel_release=\"6.1.0\","
                        "version=\"1.2.3\"} 1"));
}

TEST(AgentMetrics, LossSeriesExistAtZeroBeforeTheFirstLoss) {
  // increase() in the TokenwatchEventsLost alert needs the series before the first drop.
  AgentMetrics m("v", "c", "k");
  std::string text = Expose(m);
  EXPECT_THAT(text, HasSubstr("tokenwatch_kernel_drops_total{reason=\"ring_full\"} 0"));
  EXPECT_THAT(text,
              HasSubstr("tokenwatch_kernel_drops_total{reason=\"proc_table_update_failed\"} 0"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_kernel_drops_total{reason=\"proc_table_evicted\"} 0"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_policy_reload_failures_total 0"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_apiserver_addresses_watched 0"));
}

TEST(AgentMetrics, KernelCountersMirrorAndNeverGoBackwards) {
  AgentMetrics m("v", "c", "k");
  m.KernelDrops("ring_full", 5);
  m.KernelDrops("ring_full", 3);  // a stale read must not lower a counter
  EXPECT_THAT(Expose(m), HasSubstr("tokenwatch_kernel_drops_total{reason=\"ring_full\"} 5"));
  m.KernelDrops("ring_full", 9);
  EXPECT_THAT(Expose(m), HasSubstr("tokenwatch_kernel_drops_total{reason=\"ring_full\"} 9"));
}

TEST(AgentMetrics, ProfileUploadResultsExistFromTheStartAndMirrorTheUploader) {
  // An alert on increase(...{result="failed"}) must see the first failure, not a new series.
  AgentMetrics m("v", "c", "k");
  std::string text = Expose(m);
  EXPECT_THAT(text, HasSubstr("tokenwatch_profile_uploads_total{result=\"ok\"} 0"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_profile_uploads_total{result=\"failed\"} 0"));
  m.SetProfileUploads(2, 1);
  m.SetProfileUploads(1, 0);  // a stale read must not lower a counter
  text = Expose(m);
  EXPECT_THAT(text, HasSubstr("tokenwatch_profile_uploads_total{result=\"ok\"} 2"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_profile_uploads_total{result=\"failed\"} 1"));
}

TEST(AgentMetrics, DetectionLatencyLandsInItsBucket) {
  AgentMetrics m("v", "c", "k");
  m.ObserveDetectionLatency(0.004);
  m.ObserveDetectionLatency(3);
  std::string text = Expose(m);
  EXPECT_THAT(text, HasSubstr("tokenwatch_detection_latency_seconds_bucket{le=\"0.0025\"} 0"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_detection_latency_seconds_bucket{le=\"0.005\"} 1"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_detection_latency_seconds_bucket{le=\"5\"} 2"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_detection_latency_seconds_count 2"));
}

TEST(AgentMetrics, PolicyReloadFailuresAreCountedApart) {
  AgentMetrics m("v", "c", "k");
  m.PolicyReload(true);
  m.PolicyReload(false);
  std::string text = Expose(m);
  EXPECT_THAT(text, HasSubstr("tokenwatch_policy_reloads_total 2"));
  EXPECT_THAT(text, HasSubstr("tokenwatch_policy_reload_failures_total 1"));
}

TEST(AgentMetrics, LabelsAreBoundedNames) {
  // Every label the agent uses: none may carry a pid, a path or a pod.
  const std::set<std::string> allowed = {"type",   "reason",     "rule",           "severity",
                                         "mode",   "probe",      "stage",          "outcome",
                                         "result", "version",    "git_commit",     "kernel_release",
                                         "le"};
  AgentMetrics m("v", "c", "k");
  testing::FillAgentMetrics(&m);
  std::string text = Expose(m);
  std::regex label(R"(([a-z_]+)=")");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), label);
       it != std::sregex_iterator(); ++it) {
    EXPECT_TRUE(allowed.count((*it)[1])) << "unexpected label " << (*it)[1];
  }
}

}  // namespace
}  // namespace tokenwatch::metrics
