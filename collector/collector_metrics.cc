#include "collector/collector_metrics.h"

#include <sys/stat.h>

#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"

namespace tokenwatch::collector {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

// Size of the database at scrape time: the main file plus its write-ahead
// log, which holds recent commits until a checkpoint moves them over.
class DatabaseSize : public prometheus::Collectable {
 public:
  explicit DatabaseSize(std::string path) : path_(std::move(path)) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    if (path_.empty()) return {};
    double bytes = 0;
    for (const std::string& file : {path_, path_ + "-wal"}) {
      struct stat st {};
      if (stat(file.c_str(), &st) == 0) bytes += static_cast<double>(st.st_size);
    }
    prometheus::MetricFamily family;
    family.name = "tokenwatch_collector_database_bytes";
    family.help = "Size of the SQLite database with its write-ahead log.";
    family.type = prometheus::MetricType::Gauge;
    prometheus::ClientMetric metric;
    metric.gauge.value = bytes;
    family.metric.push_back(std::move(metric));
    return {std::move(family)};
  }

 private:
  const std::string path_;
};

}  // namespace

prometheus::Histogram::BucketBoundaries CollectorMetrics::Buckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

CollectorMetrics::CollectorMetrics(std::string db_path)
    : registry_(std::make_shared<prometheus::Registry>()),
      database_size_(std::make_shared<DatabaseSize>(std::move(db_path))),
      received_(&BuildCounter()
                     .Name("tokenwatch_collector_findings_received_total")
                     .Help("Findings read from agents' Report streams, valid or not.")
                     .Register(*registry_)
                     .Add({})),
      rejected_(BuildCounter()
                    .Name("tokenwatch_collector_findings_rejected_total")
                    .Help("Report messages refused, by reason (unparsable, invalid, "
                          "node_mismatch, protocol); the stream is closed.")
                    .Register(*registry_)),
      stored_(&BuildCounter()
                   .Name("tokenwatch_collector_findings_stored_total")
                   .Help("Findings durably committed to the database (re-sends included).")
                   .Register(*registry_)
                   .Add({})),
      store_errors_(&BuildCounter()
                         .Name("tokenwatch_collector_store_errors_total")
                         .Help("Findings whose commit failed; the agent re-sends them.")
                         .Register(*registry_)
                         .Add({})),
      connected_(&BuildGauge()
                      .Name("tokenwatch_collector_connected_agents")
                      .Help("Report streams open with an accepted Hello.")
                      .Register(*registry_)
                      .Add({})),
      ingest_latency_(&BuildHistogram()
                           .Name("tokenwatch_collector_ingest_latency_seconds")
                           .Help("A finding read off a Report stream to its durable commit "
                                 "(what delays the ack).")
                           .Register(*registry_)
                           .Add({}, Buckets())),
      requests_(BuildHistogram()
                    .Name("tokenwatch_collector_request_duration_seconds")
                    .Help("Time to answer a unary call (a query or a profile upload), by gRPC "
                          "method.")
                    .Register(*registry_)) {
  // Every reason and method exists from the start, so rate() sees the first one.
  for (const char* reason : {kUnparsable, kInvalid, kNodeMismatch, kProtocol}) {
    rejected_.Add({{"reason", reason}});
  }
  for (const char* method : {"ListFindings", "GetFinding", "UploadProfiles", "ListProfiles"}) {
    requests_.Add({{"method", method}}, Buckets());
  }
}

std::vector<std::shared_ptr<prometheus::Collectable>> CollectorMetrics::collectables() const {
  return {registry_, database_size_};
}

}  // namespace tokenwatch::collector
