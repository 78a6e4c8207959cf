#include "agent/export/collector_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/random/random.h"
#include "agent/common/log.h"

namespace tokenwatch::exporting {

CollectorClient::CollectorClient(Options options) : options_(std::move(options)) {
  grpc::ChannelArguments args;
  // Notice a dead collector within seconds rather than at the next write.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  channel_ = grpc::CreateCustomChannel(options_.address, grpc::InsecureChannelCredentials(), args);
  stub_ = v1::Collector::NewStub(channel_);
}

CollectorClient::~CollectorClient() { Stop(absl::ZeroDuration()); }

void CollectorClient::Start() { thread_ = std::thread([this] { Run(); }); }

void CollectorClient::Stop(absl::Duration drain) {
  {
    absl::MutexLock lock(&mu_);
    auto drained = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return unacked_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&drained), drain);
    stopping_ = true;
    if (live_context_ != nullptr) live_context_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
}

void CollectorClient::Enqueue(const v1::Finding& finding) {
  absl::MutexLock lock(&mu_);
  v1::SequencedFinding item;
  item.set_sequence(next_sequence_++);
  *item.mutable_finding() = finding;
  unacked_.push_back(std::move(item));
  ++stats_.enqueued;
  while (unacked_.size() > options_.max_queue) {
    unacked_.pop_front();
    ++stats_.dropped;
  }
}

CollectorClient::Stats CollectorClient::stats() const {
  absl::MutexLock lock(&mu_);
  Stats s = stats_;
  s.queue_depth = unacked_.size();
  return s;
}

void CollectorClient::Run() {
  absl::BitGen rng;
  absl::Duration backoff = options_.min_backoff;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    bool progressed = RunStream();
    if (progressed) backoff = options_.min_backoff;
    // Full jitter: sleep a random time up to the current backoff, so that a
    // fleet of agents does not reconnect in lockstep after a collector restart.
    absl::Duration sleep = absl::Nanoseconds(
        absl::Uniform<int64_t>(rng, 0, std::max<int64_t>(1, absl::ToInt64Nanoseconds(backoff))));
    backoff = std::min(backoff * 2, options_.max_backoff);
    absl::MutexLock lock(&mu_);
    auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
    mu_.AwaitWithTimeout(absl::Condition(&stop), sleep);
  }
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
      uint64_t upto = response.ack().sequence();
      absl::MutexLock lock(&mu_);
      while (!unacked_.empty() && unacked_.front().sequence() <= upto) {
        unacked_.pop_front();
        ++stats_.acked;
      }
      acked_any = true;
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
    absl::MutexLock lock(&mu_);
    stats_.connected = true;
  }

  // Everything unacked is (re)sent in order, starting from the oldest.
  uint64_t sent_upto = 0;
  while (ok) {
    v1::ReportRequest request;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stopping_ || stream_broken_ ||
               (!unacked_.empty() && unacked_.back().sequence() > sent_upto);
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_ || stream_broken_) break;
      auto it = std::find_if(unacked_.begin(), unacked_.end(),
                             [&](const v1::SequencedFinding& f) { return f.sequence() > sent_upto; });
      *request.mutable_finding() = *it;
    }
    ok = stream->Write(request);
    if (ok) {
      sent_upto = request.finding().sequence();
      absl::MutexLock lock(&mu_);
      ++stats_.sent;
    }
  }

  context.TryCancel();
  reader.join();
  grpc::Status status = stream->Finish();
  absl::MutexLock lock(&mu_);
  live_context_ = nullptr;
  if (stats_.connected || !stopping_) {
    if (!stopping_) {
      ++stats_.send_failures;
      Logf(LogLevel::kWarning, "collector %s: stream ended: %s; will retry", options_.address,
           status.error_message().empty() ? "connection failed" : status.error_message());
    }
  }
  stats_.connected = false;
  return acked_any;
}

}  // namespace tokenwatch::exporting
