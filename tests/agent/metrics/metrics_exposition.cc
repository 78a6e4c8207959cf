// Prints the agent's or the collector's /metrics exposition with every series
// filled in, for `promtool check metrics` in CI (tests/agent/metrics).
// Usage: metrics_exposition agent|collector DB_FILE
#include <cstdio>
#include <iostream>
#include <string>

#include "agent/metrics/agent_metrics.h"
#include "collector/collector_metrics.h"
#include "prometheus/text_serializer.h"
#include "tests/agent/metrics/sample_metrics.h"

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "";
  std::vector<prometheus::MetricFamily> families;
  if (which == "agent") {
    tokenwatch::metrics::AgentMetrics m("0.0.0-test", "abc1234", "6.1.0");
    tokenwatch::metrics::testing::FillAgentMetrics(&m);
    families = m.registry()->Collect();
  } else if (which == "collector" && argc > 2) {
    tokenwatch::collector::CollectorMetrics m(argv[2]);
    tokenwatch::metrics::testing::FillCollectorMetrics(&m);
    for (const auto& c : m.collectables()) {
      auto more = c->Collect();
      families.insert(families.end(), more.begin(), more.end());
    }
  } else {
    std::fprintf(stderr, "usage: metrics_exposition agent|collector DB_FILE\n");
    return 2;
  }
  prometheus::TextSerializer().Serialize(std::cout, families);
  return 0;
}
