#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tokenwatch/v1/collector.grpc.pb.h"

namespace tokenwatch::exporting {

// Streams findings to the collector with sequence numbers and keeps each one
// until the collector acks it; on a broken stream it reconnects with
// exponential backoff and jitter and re-sends everything unacked, in order.
// (The durable on-disk spool of issue #6 goes in front of this queue.)
//
// The agent has one outbound stream, so this uses gRPC's synchronous API with
// one writer thread and one ack-reader thread per connection: ordering and
// flow control stay obvious. Threading: Enqueue() and stats() from any
// thread; the delivery thread is owned here and joined by Stop().
class CollectorClient {
 public:
  struct Options {
    std::string address;  // HOST:PORT
    std::string node;
    std::string agent_id;
    std::string version;
    size_t max_queue = 100000;  // findings held unacked before the oldest is dropped
    absl::Duration min_backoff = absl::Milliseconds(200);
    absl::Duration max_backoff = absl::Seconds(30);
  };

  struct Stats {
    uint64_t enqueued = 0;
    uint64_t sent = 0;
    uint64_t acked = 0;
    uint64_t send_failures = 0;
    uint64_t dropped = 0;
    uint64_t queue_depth = 0;
    bool connected = false;
  };

  explicit CollectorClient(Options options);
  ~CollectorClient();

  void Start();
  // Waits up to `drain` for everything queued to be acked, then stops.
  void Stop(absl::Duration drain = absl::Seconds(2));

  void Enqueue(const v1::Finding& finding);
  Stats stats() const;

 private:
  void Run();
  // One connection: returns after the stream broke or Stop() was called;
  // true when the collector acked anything on it.
  bool RunStream();

  Options options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Collector::Stub> stub_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::deque<v1::SequencedFinding> unacked_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stream_broken_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* live_context_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tokenwatch::exporting
