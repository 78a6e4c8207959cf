#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/export/spool.h"
#include "tokenwatch/v1/collector.grpc.pb.h"

namespace tokenwatch::exporting {

// The finding the client raises, once delivery works again, for findings that were lost before
// the collector could store them (the spool was full, or a spool record was damaged).
inline constexpr char kFindingsDroppedRuleId[] = "TW091";
inline constexpr char kFindingsDroppedRuleName[] = "sensor-findings-dropped";

// Builds that finding: a fresh UUID, the node, now, `count` = dropped + corrupt.
tokenwatch::v1::Finding MakeFindingsDroppedFinding(const std::string& node, uint64_t dropped,
                                                   uint64_t corrupt, absl::Time now);

// Delivers every finding to the collector at least once. Enqueue() puts a finding in a bounded
// in-memory queue; a spool thread appends it to the durable Spool under the state directory and
// fsyncs in batches (every sync_interval); the delivery thread streams the spool's unacked
// findings in order with their sequence numbers and deletes what the collector acks. On a broken
// stream it reconnects with exponential backoff and full jitter and replays everything unacked;
// after an agent restart the spool replays what the previous run left.
//
// The agent has one outbound stream, so this uses gRPC's synchronous API with one writer and one
// ack-reader thread per connection: ordering and flow control stay obvious.
//
// Threading: Enqueue() and stats() from any thread; the spool and delivery threads are owned
// here and joined by Stop() (or the destructor).
class CollectorClient {
 public:
  struct Options {
    std::string address;  // HOST:PORT
    std::string node;
    std::string agent_id;
    std::string version;
    // The durable spool; its directory must be writable.
    Spool::Options spool;
    // fsync the spool at most this long after an append.
    absl::Duration sync_interval = absl::Milliseconds(100);
    // Findings held in memory before the spool thread takes them; past this the oldest are
    // dropped and counted (only when the disk stalls).
    size_t max_queue = 10000;
    absl::Duration min_backoff = absl::Milliseconds(200);
    absl::Duration max_backoff = absl::Seconds(30);
    // TLS: PEM file paths. With tls_ca set the channel is TLS and verifies the collector
    // against it; tls_cert and tls_key (both or neither) present a client certificate.
    std::string tls_ca;
    std::string tls_cert;
    std::string tls_key;
  };

  struct Stats {
    uint64_t enqueued = 0;
    uint64_t sent = 0;
    uint64_t acked = 0;
    uint64_t send_failures = 0;
    // Findings lost for good: spool full, damaged records, memory queue overflow.
    uint64_t dropped = 0;
    uint64_t spool_dropped = 0;
    uint64_t spool_corrupt = 0;
    // TW091 findings raised.
    uint64_t drop_reports = 0;
    // Not yet acked: in memory plus in the spool.
    uint64_t queue_depth = 0;
    uint64_t spool_bytes = 0;
    bool connected = false;
  };

  // Opens the spool (replaying what an earlier run left) and reads the TLS files. Fails with a
  // message naming the file or directory.
  static absl::StatusOr<std::unique_ptr<CollectorClient>> Create(Options options);
  ~CollectorClient();

  void Start();
  // Waits up to `drain` for everything queued to be acked, then stops. Whatever is still
  // unacked stays in the spool for the next run.
  void Stop(absl::Duration drain = absl::Seconds(2));

  void Enqueue(const v1::Finding& finding);
  Stats stats() const;

 private:
  CollectorClient(Options options, std::unique_ptr<Spool> spool,
                  std::shared_ptr<grpc::Channel> channel);

  void RunSpooler();
  // Moves the in-memory queue into the spool; fsyncs when `sync` or the interval has passed.
  void SpoolPending(bool sync);
  void RunDelivery();
  // One connection: returns after the stream broke or Stop() was called; true when the
  // collector acked anything on it.
  bool RunStream();
  // When a stream opens and after each ack: raises TW091 for findings lost since the last
  // report, written to the spool at once.
  void ReportLosses() ABSL_LOCKS_EXCLUDED(report_mu_, mu_);

  const Options options_;
  const std::unique_ptr<Spool> spool_;
  const std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Collector::Stub> stub_;
  std::thread spool_thread_;
  std::thread delivery_thread_;
  absl::Time last_sync_ = absl::InfinitePast();  // spool thread only

  mutable absl::Mutex mu_;
  std::deque<v1::Finding> pending_ ABSL_GUARDED_BY(mu_);
  // The newest sequence number the spool holds, so the sender knows when to read.
  uint64_t spooled_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  // Serialises ReportLosses (the stream's writer and its ack reader both call it), so that one
  // count of losses goes into one report.
  absl::Mutex report_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stream_broken_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* live_context_ ABSL_GUARDED_BY(mu_) = nullptr;
  // Findings lost before the spool (memory queue overflow, failed appends), for stats().
  uint64_t queue_dropped_ ABSL_GUARDED_BY(mu_) = 0;
  // Memory queue overflows not yet handed to the spool's loss count.
  uint64_t drops_to_spool_ ABSL_GUARDED_BY(mu_) = 0;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tokenwatch::exporting
