#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace tokenwatch::collector {

// The collector's metrics, all prefixed tokenwatch_collector_ and listed in
// agent/metrics/README-metrics.md. Labels are bounded: rejection reasons from
// a fixed list and gRPC method names, never a node, agent or finding id.
// The database size is read from the file system at each scrape.
//
// Threading: every method may be called from any thread (prometheus-cpp's
// metrics are atomic).
class CollectorMetrics {
 public:
  // Why a Report message was refused; the stream that carried it is closed.
  static constexpr char kUnparsable[] = "unparsable";        // not a ReportRequest
  static constexpr char kInvalid[] = "invalid";              // failed validation
  static constexpr char kNodeMismatch[] = "node_mismatch";   // not the certificate's node
  static constexpr char kProtocol[] = "protocol";            // no/second Hello, runaway gap

  // `db_path` is the SQLite database whose size (with its WAL) is exported;
  // "" exports none.
  explicit CollectorMetrics(std::string db_path = "");

  // The registry plus the database-size collector, for HttpServer::Start.
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables() const;

  // A finding message read from a Report stream (valid or not).
  void FindingReceived() { received_->Increment(); }
  void Rejected(absl::string_view reason) {
    rejected_.Add({{"reason", std::string(reason)}}).Increment();
  }
  // One finding's commit came back: durably stored (re-sends included), or
  // the store failed (the agent keeps it and re-sends).
  void FindingCommitted(bool ok, absl::Duration since_received) {
    if (ok) {
      stored_->Increment();
      ingest_latency_->Observe(absl::ToDoubleSeconds(since_received));
    } else {
      store_errors_->Increment();
    }
  }
  void AgentConnected() { connected_->Increment(); }
  void AgentDisconnected() { connected_->Decrement(); }
  void ObserveRequest(absl::string_view method, absl::Duration took) {
    requests_.Add({{"method", std::string(method)}}, Buckets())
        .Observe(absl::ToDoubleSeconds(took));
  }

 private:
  static prometheus::Histogram::BucketBoundaries Buckets();

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> database_size_;
  prometheus::Counter* received_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Counter* stored_;
  prometheus::Counter* store_errors_;
  prometheus::Gauge* connected_;
  prometheus::Histogram* ingest_latency_;
  prometheus::Family<prometheus::Histogram>& requests_;
};

// Observes how long one unary request took when it goes out of scope.
class RequestTimer {
 public:
  RequestTimer(CollectorMetrics* metrics, absl::string_view method)
      : metrics_(metrics), method_(method), start_(absl::Now()) {}
  ~RequestTimer() { metrics_->ObserveRequest(method_, absl::Now() - start_); }
  RequestTimer(const RequestTimer&) = delete;
  RequestTimer& operator=(const RequestTimer&) = delete;

 private:
  CollectorMetrics* const metrics_;
  const absl::string_view method_;
  const absl::Time start_;
};

}  // namespace tokenwatch::collector
