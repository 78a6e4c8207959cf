#include "agent/export/collector_client.h"

#include <grpcpp/grpcpp.h>
#include <uuid/uuid.h>

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "agent/export/collector_channel.h"

namespace tokenwatch::exporting {
namespace {

// Findings read from the spool per batch on the stream.
constexpr size_t kSendBatch = 256;

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* ts) {
  const int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1000000000);
  ts->set_nanos(static_cast<int32_t>(nanos % 1000000000));
}

}  // namespace

v1::Finding MakeFindingsDroppedFinding(const std::string& node, uint64_t dropped,
                                       uint64_t corrupt, absl::Time now) {
  v1::Finding f;
  uuid_t uuid;
  uuid_generate_random(uuid);
  char text[37];
  uuid_unparse_lower(uuid, text);
  f.set_id(text);
  f.set_node(node);
  SetTimestamp(now, f.mutable_time());
  *f.mutable_last_seen() = f.time();
  f.set_count(dropped + corrupt);
  f.set_rule_id(kFindingsDroppedRuleId);
  f.set_rule_name(kFindingsDroppedRuleName);
  f.set_severity(v1::SEVERITY_HIGH);
  // Losing evidence is what an attacker who cuts the agent off from the collector wants.
  f.add_mitre("T1562.006");
  f.set_summary(absl::StrCat(dropped + corrupt,
                             " findings were lost before the collector could store them (",
                             dropped, " dropped because the agent's spool was full or could "
                             "not take them, ", corrupt,
                             " damaged in the spool)"));
  return f;
}

absl::StatusOr<std::unique_ptr<CollectorClient>> CollectorClient::Create(Options options) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      MakeCollectorChannel({options.address, options.tls_ca, options.tls_cert, options.tls_key});
  if (!channel.ok()) return channel.status();
  absl::StatusOr<std::unique_ptr<Spool>> spool = Spool::Open(options.spool);
  if (!spool.ok()) return spool.status();
  Spool::Stats s = (*spool)->stats();
  if (s.unacked > 0 || s.corrupt_total > 0) {
    Logf(LogLevel::kInfo, "spool %s: %d unacked findings to replay, %d damaged records skipped",
         options.spool.dir, s.unacked, s.corrupt_total);
  }
  return std::unique_ptr<CollectorClient>(
      new CollectorClient(std::move(options), *std::move(spool), *std::move(channel)));
}

CollectorClient::CollectorClient(Options options, std::unique_ptr<Spool> spool,
                                 std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)), spool_(std::move(spool)), channel_(std::move(channel)) {
  stub_ = v1::Collector::NewStub(channel_);
  absl::MutexLock lock(&mu_);
  spooled_sequence_ = spool_->stats().last_sequence;
}

CollectorClient::~CollectorClient() { Stop(absl::ZeroDuration()); }

void CollectorClient::Start() {
  absl::MutexLock lock(&mu_);
  if (started_ || stopping_) return;
  started_ = true;
  spool_thread_ = std::thread([this] { RunSpooler(); });
  delivery_thread_ = std::thread([this] { RunDelivery(); });
}

void CollectorClient::Stop(absl::Duration drain) {
  bool started;
  {
    absl::MutexLock lock(&mu_);
    started = started_;
    auto drained = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return pending_.empty() && spool_->stats().unacked == 0;
    };
    if (started && !stopping_) mu_.AwaitWithTimeout(absl::Condition(&drained), drain);
    stopping_ = true;
    if (live_context_ != nullptr) live_context_->TryCancel();
  }
  if (delivery_thread_.joinable()) delivery_thread_.join();
  if (spool_thread_.joinable()) spool_thread_.join();
  // Whatever was still in memory goes to disk for the next run.
  if (!started) SpoolPending(/*sync=*/true);
}

void CollectorClient::Enqueue(const v1::Finding& finding) {
  absl::MutexLock lock(&mu_);
  pending_.push_back(finding);
  ++stats_.enqueued;
  while (pending_.size() > options_.max_queue) {
    pending_.pop_front();
    ++queue_dropped_;
    ++drops_to_spool_;
  }
}

CollectorClient::Stats CollectorClient::stats() const {
  Spool::Stats spool = spool_->stats();
  absl::MutexLock lock(&mu_);
  Stats s = stats_;
  s.spool_dropped = spool.dropped_total;
  s.spool_corrupt = spool.corrupt_total;
  s.dropped = spool.dropped_total + spool.corrupt_total + queue_dropped_;
  s.queue_depth = pending_.size() + spool.unacked;
  s.spool_bytes = spool.bytes;
  return s;
}

void CollectorClient::RunSpooler() {
  while (true) {
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stopping_ || !pending_.empty();
      };
      mu_.AwaitWithTimeout(absl::Condition(&ready), options_.sync_interval);
      stop = stopping_;
    }
    SpoolPending(/*sync=*/stop);
    if (stop) return;
  }
}

void CollectorClient::SpoolPending(bool sync) {
  std::deque<v1::Finding> batch;
  uint64_t overflowed;
  {
    absl::MutexLock lock(&mu_);
    batch.swap(pending_);
    overflowed = std::exchange(drops_to_spool_, 0);
  }
  uint64_t last = 0;
  uint64_t failed = 0;
  for (const v1::Finding& finding : batch) {
    absl::StatusOr<uint64_t> sequence = spool_->Append(finding);
    if (sequence.ok()) {
      last = *sequence;
    } else {
      ++failed;
      if (failed == 1) Logf(LogLevel::kWarning, "%s", sequence.status().message());
    }
  }
  // Handed over here rather than in Enqueue, which must not wait on a stalled disk; written to
  // disk by the batch's fsync, so the count survives a SIGKILL as the appended findings do.
  spool_->CountDropped(overflowed + failed);
  const absl::Time now = absl::Now();
  if (sync || now - last_sync_ >= options_.sync_interval) {
    if (absl::Status s = spool_->Sync(); !s.ok()) Logf(LogLevel::kWarning, "%s", s.message());
    last_sync_ = now;
  }
  absl::MutexLock lock(&mu_);
  queue_dropped_ += failed;
  spooled_sequence_ = std::max(spooled_sequence_, last);
}

void CollectorClient::RunDelivery() {
  absl::BitGen rng;
  absl::Duration backoff = options_.min_backoff;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    bool progressed = RunStream();
    if (progressed) backoff = options_.min_backoff;
    // Full jitter: sleep a random time up to the current backoff, so that a fleet of agents
    // does not reconnect in lockstep after a collector restart.
    absl::Duration sleep = absl::Nanoseconds(
        absl::Uniform<int64_t>(rng, 0, std::max<int64_t>(1, absl::ToInt64Nanoseconds(backoff))));
    backoff = std::min(backoff * 2, options_.max_backoff);
    absl::MutexLock lock(&mu_);
    auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
    mu_.AwaitWithTimeout(absl::Condition(&stop), sleep);
  }
}

void CollectorClient::ReportLosses() {
  absl::MutexLock report_lock(&report_mu_);
  // The report goes straight into the spool, durably, in the same step that clears the spool's
  // persisted loss counts (memory queue overflows among them, see SpoolPending): a SIGKILL at
  // any point leaves the loss counted or reported.
  Spool::Lost reported;
  absl::StatusOr<uint64_t> sequence =
      spool_->AppendLossReport([&](const Spool::Lost& lost) {
        reported = lost;
        return MakeFindingsDroppedFinding(options_.node, lost.dropped, lost.corrupt,
                                          absl::Now());
      });
  if (!sequence.ok()) {
    Logf(LogLevel::kWarning, "cannot spool the %s report, will retry: %s",
         kFindingsDroppedRuleId, sequence.status().message());
    return;
  }
  if (*sequence == 0) return;
  Logf(LogLevel::kWarning,
       "%d findings were lost before delivery (%d spool full, %d damaged); reporting %s",
       reported.dropped + reported.corrupt, reported.dropped, reported.corrupt,
       kFindingsDroppedRuleId);
  absl::MutexLock lock(&mu_);
  ++stats_.drop_reports;
  spooled_sequence_ = std::max(spooled_sequence_, *sequence);
}

bool CollectorClient::RunStream() {
  grpc::ClientContext context;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return false;
    live_context_ = &context;
    stream_broken_ = false;
  }
  std::unique_ptr<grpc::ClientReaderWriter<v1::ReportRequest, v1::ReportResponse>> stream =
      stub_->Report(&context);
  std::atomic<bool> acked_any{false};

  // Acks arrive on their own thread; an ack covers everything up to it.
  std::thread reader([&] {
    v1::ReportResponse response;
    while (stream->Read(&response)) {
      if (!response.has_ack()) continue;
      const uint64_t covered = spool_->Ack(response.ack().sequence());
      {
        absl::MutexLock lock(&mu_);
        stats_.acked += covered;
      }
      acked_any = true;
      ReportLosses();
    }
    absl::MutexLock lock(&mu_);
    stream_broken_ = true;
  });

  v1::ReportRequest hello;
  hello.mutable_hello()->set_node(options_.node);
  hello.mutable_hello()->set_agent_id(options_.agent_id);
  hello.mutable_hello()->set_version(options_.version);
  bool ok = stream->Write(hello);
  if (ok) {
    {
      absl::MutexLock lock(&mu_);
      stats_.connected = true;
    }
    // Losses from before a restart are reported even when nothing else is left to send. With
    // findings to send, the first ack reports them, once acked segments made room: appending
    // to a full spool now would drop more.
    if (spool_->stats().unacked == 0) ReportLosses();
  }

  // Everything unacked is (re)sent in order, starting from the oldest.
  uint64_t sent_upto = spool_->stats().acked;
  auto send_gap = [&](uint64_t through) {
    v1::ReportRequest request;
    request.mutable_gap()->set_through(through);
    ok = stream->Write(request);
    if (ok) sent_upto = through;
  };
  while (ok) {
    uint64_t spooled;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stopping_ || stream_broken_ || spooled_sequence_ > sent_upto;
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_ || stream_broken_) break;
      spooled = spooled_sequence_;
    }
    std::vector<v1::SequencedFinding> batch = spool_->ReadAfter(sent_upto, kSendBatch);
    if (batch.empty()) {
      // Everything up to `spooled` that we had not sent is gone (dropped or damaged).
      send_gap(spooled);
      continue;
    }
    for (v1::SequencedFinding& item : batch) {
      if (item.sequence() != sent_upto + 1) send_gap(item.sequence() - 1);
      if (!ok) break;
      v1::ReportRequest request;
      const uint64_t sequence = item.sequence();
      *request.mutable_finding() = std::move(item);
      ok = stream->Write(request);
      if (!ok) break;
      sent_upto = sequence;
      absl::MutexLock lock(&mu_);
      ++stats_.sent;
    }
  }

  {
    // When the collector ended the stream, Finish() reports its status (why it refused us);
    // otherwise the reader still waits for acks and must be cancelled.
    absl::MutexLock lock(&mu_);
    if (!stream_broken_) context.TryCancel();
  }
  reader.join();
  grpc::Status status = stream->Finish();
  absl::MutexLock lock(&mu_);
  live_context_ = nullptr;
  if (!stopping_) {
    ++stats_.send_failures;
    Logf(LogLevel::kWarning, "collector %s: stream ended: %s; will retry", options_.address,
         status.error_message().empty() ? "connection failed" : status.error_message());
  }
  stats_.connected = false;
  return acked_any;
}

}  // namespace tokenwatch::exporting
