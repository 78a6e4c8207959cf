#include "collector/service.h"

#include <cstdint>
#include <cstdio>
#include <deque>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include <google/protobuf/arena.h>
#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "collector/grpc_status.h"
#include "collector/peer_names.h"
#include "collector/validate.h"

namespace tokenwatch::collector {
namespace {

using tokenwatch::v1::Finding;
using tokenwatch::v1::ReportRequest;
using tokenwatch::v1::ReportResponse;

// How many stored findings may sit above a gap in the sequence before we give up on the stream:
// bounds the memory one misbehaving agent can hold.
constexpr size_t kMaxOutOfOrder = 65536;
// Findings read from one stream and not yet committed; past this the stream stops reading until
// commits catch up, so a fast agent cannot fill the collector's memory.
constexpr size_t kMaxInFlight = 8192;
// Findings queued for one watcher that is slower than the ingest.
constexpr size_t kMaxWatchBacklog = 10000;

// One agent's Report stream. Each finding read is validated and handed to the group-commit
// Ingest; the stream keeps reading meanwhile. Commits come back in order, and the reactor acks
// the highest sequence up to which every finding is committed (or settled by a gap). At most one
// write is in flight; acks that become due meanwhile collapse into the next write, which always
// carries the newest contiguous sequence.
//
// Threading: reactions (on gRPC threads) and commit callbacks (on the ingest thread) run
// concurrently, so all state is under mu_; reactor calls (StartRead, StartWrite, Finish) are
// made outside it. Finish waits until no commit is pending and no write is in flight, so the
// ingest never calls back into a deleted reactor. Deletes itself in OnDone.
class ReportReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  ReportReactor(Ingest* ingest, CollectorMetrics* metrics, grpc::CallbackServerContext* context,
                bool verify_node_names)
      : ingest_(ingest),
        metrics_(metrics),
        peer_(context->peer()),
        verify_node_names_(verify_node_names),
        certificate_names_(verify_node_names ? CertificateNames(context)
                                             : std::set<std::string>()) {
    StartRead(&request_bytes_);
  }

  void OnReadDone(bool ok) override {
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      if (finish_status_) {
        actions = NextActionsLocked();
      } else if (!ok) {
        // The agent half-closed or went away; ack what is still committing, then finish.
        finish_status_ = grpc::Status::OK;
        actions = NextActionsLocked();
      } else if (absl::Status s = HandleRequestLocked(); !s.ok()) {
        std::fprintf(stderr, "tokenwatch-collector: report from %s (node %s): %s\n",
                     peer_.c_str(), node_.empty() ? "?" : node_.c_str(),
                     std::string(s.message()).c_str());
        finish_status_ = ToGrpc(s);
        actions = NextActionsLocked();
      } else {
        if (in_flight_ < kMaxInFlight) {
          actions.read = true;
        } else {
          read_paused_ = true;
        }
        actions = NextActionsLocked(actions);
      }
    }
    Act(actions);
  }

  void OnWriteDone(bool ok) override {
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      // A failed write means the stream is broken: no more acks can reach the agent. The read
      // outstanding fails too and leads to the finish.
      if (!ok) broken_ = true;
      actions = NextActionsLocked();
    }
    Act(actions);
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&mu_);
      if (hello_seen_) metrics_->AgentDisconnected();
    }
    delete this;
  }

 private:
  struct Actions {
    bool read = false;
    bool write = false;
    std::optional<grpc::Status> finish;
  };

  void Act(Actions& actions) {
    if (actions.write) StartWrite(&response_bytes_);
    if (actions.read) StartRead(&request_bytes_);
    if (actions.finish) Finish(*actions.finish);
  }

  // Decides the next write and whether to finish; `actions` may already ask for a read.
  Actions NextActionsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return NextActionsLocked(Actions());
  }
  Actions NextActionsLocked(Actions actions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!broken_ && !finished_) actions.write = PrepareAckLocked();
    if (finish_status_ && !finished_ && !writing_ && in_flight_ == 0) {
      finished_ = true;
      actions.finish = *finish_status_;
      actions.read = false;
    }
    return actions;
  }

  // Processes request_bytes_; an error finishes the stream with that status.
  absl::Status HandleRequestLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::string bytes;
    std::vector<grpc::Slice> slices;
    if (!request_bytes_.Dump(&slices).ok()) {
      return absl::InvalidArgumentError("request: unreadable");
    }
    for (const grpc::Slice& s : slices) {
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    // Parsed and validated in two steps (ParseReportRequest's) so that each refusal is counted
    // under its reason. The parse lives on an arena that starts on the stack: a finding's
    // dozens of strings then cost no allocation of their own, and freeing them is one step.
    alignas(8) char arena_block[8192];
    google::protobuf::ArenaOptions arena_options;
    arena_options.initial_block = arena_block;
    arena_options.initial_block_size = sizeof arena_block;
    google::protobuf::Arena arena(arena_options);
    ReportRequest& request = *google::protobuf::Arena::CreateMessage<ReportRequest>(&arena);
    if (!request.ParseFromString(bytes)) {
      metrics_->Rejected(CollectorMetrics::kUnparsable);
      return absl::InvalidArgumentError("request: not a serialized ReportRequest");
    }
    if (request.has_finding()) metrics_->FindingReceived();
    if (absl::Status s = ValidateReportRequest(request, absl::Now()); !s.ok()) {
      metrics_->Rejected(CollectorMetrics::kInvalid);
      return s;
    }

    if (request.has_hello()) {
      if (hello_seen_) {
        metrics_->Rejected(CollectorMetrics::kProtocol);
        return absl::InvalidArgumentError("hello: sent twice on one stream");
      }
      if (verify_node_names_ && certificate_names_.count(request.hello().node()) == 0) {
        metrics_->Rejected(CollectorMetrics::kNodeMismatch);
        return absl::PermissionDeniedError(
            absl::StrCat("hello.node: '", request.hello().node(),
                         "' is not a name in the client certificate"));
      }
      hello_seen_ = true;
      metrics_->AgentConnected();
      node_ = request.hello().node();
      return absl::OkStatus();
    }
    if (!hello_seen_) {
      metrics_->Rejected(CollectorMetrics::kProtocol);
      return absl::InvalidArgumentError("the first message of a Report stream must be a Hello");
    }
    if (request.has_gap()) {
      pipeline_.push_back(Step{request.gap().through(), /*gap=*/true, /*done=*/true});
      return SettleLocked();
    }
    const uint64_t seq = request.finding().sequence();
    if (verify_node_names_ && request.finding().finding().node() != node_) {
      metrics_->Rejected(CollectorMetrics::kNodeMismatch);
      return absl::PermissionDeniedError(
          absl::StrCat("sequence ", seq, ": finding.node is not the node of this stream"));
    }
    pipeline_.push_back(Step{seq, /*gap=*/false, /*done=*/false});
    ++in_flight_;
    ingest_->Submit(ToStored(request.finding().finding(), std::string(FindingBytesIn(bytes))),
                    [this, received = absl::Now()](const absl::Status& status) {
                      metrics_->FindingCommitted(status.ok(), absl::Now() - received);
                      OnCommitted(status);
                    });
    return absl::OkStatus();
  }

  // On the ingest thread: the oldest pending finding of this stream is committed (or not).
  void OnCommitted(const absl::Status& status) {
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      --in_flight_;
      for (Step& step : pipeline_) {
        if (!step.done) {
          step.done = true;
          break;
        }
      }
      if (!status.ok()) {
        // The agent keeps the finding in its spool and re-sends it on its next stream.
        if (!finish_status_) {
          std::fprintf(stderr, "tokenwatch-collector: store findings from %s: %s\n",
                       node_.c_str(), std::string(status.message()).c_str());
          finish_status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                        absl::StrCat("store finding: ", status.message()));
        }
        pipeline_.clear();
      } else if (absl::Status s = SettleLocked(); !s.ok() && !finish_status_) {
        finish_status_ = ToGrpc(s);
      }
      if (read_paused_ && !finish_status_ && in_flight_ < kMaxInFlight / 2) {
        read_paused_ = false;
        actions.read = true;
      }
      actions = NextActionsLocked(actions);
    }
    Act(actions);
  }

  // Moves committed steps from the pipeline's front into the contiguous run.
  absl::Status SettleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (!pipeline_.empty() && pipeline_.front().done) {
      const Step step = pipeline_.front();
      pipeline_.pop_front();
      if (step.gap) {
        // The agent will never send what it has not sent up to here.
        contiguous_ = run_started_ ? std::max(contiguous_, step.sequence) : step.sequence;
        run_started_ = true;
      } else if (!run_started_) {
        run_started_ = true;
        contiguous_ = step.sequence;
      } else if (step.sequence == contiguous_ + 1) {
        contiguous_ = step.sequence;
      } else if (step.sequence <= contiguous_) {
        // A re-send of something already acked: the agent may have missed our ack.
        resend_ack_ = true;
      } else {
        ahead_.insert(step.sequence);
        if (ahead_.size() > kMaxOutOfOrder) {
          metrics_->Rejected(CollectorMetrics::kProtocol);
          return absl::ResourceExhaustedError("finding.sequence: too many findings after a gap");
        }
      }
      while (!ahead_.empty() && *ahead_.begin() <= contiguous_ + 1) {
        contiguous_ = std::max(contiguous_, *ahead_.begin());
        ahead_.erase(ahead_.begin());
      }
      ack_wanted_ = contiguous_;
    }
    return absl::OkStatus();
  }

  // Fills response_bytes_ and marks a write in flight when an ack is due.
  bool PrepareAckLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return false;
    if (ack_wanted_ == 0 || (ack_wanted_ <= ack_sent_ && !resend_ack_)) return false;
    ReportResponse response;
    response.mutable_ack()->set_sequence(ack_wanted_);
    bool own_buffer = false;
    if (!grpc::SerializationTraits<ReportResponse>::Serialize(response, &response_bytes_,
                                                              &own_buffer)
             .ok()) {
      return false;  // cannot happen for a message this small; the next ack retries
    }
    ack_sent_ = ack_wanted_;
    resend_ack_ = false;
    writing_ = true;
    return true;
  }

  struct Step {
    uint64_t sequence;  // the finding's sequence, or the gap's `through`
    bool gap;
    bool done;  // committed (gaps are done at once)
  };

  Ingest* const ingest_;
  CollectorMetrics* const metrics_;
  const std::string peer_;
  const bool verify_node_names_;
  const std::set<std::string> certificate_names_;

  // Only the read path touches request_bytes_, only one read is outstanding.
  grpc::ByteBuffer request_bytes_;

  absl::Mutex mu_;
  bool hello_seen_ ABSL_GUARDED_BY(mu_) = false;
  std::string node_ ABSL_GUARDED_BY(mu_);
  std::deque<Step> pipeline_ ABSL_GUARDED_BY(mu_);
  size_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool run_started_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t contiguous_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<uint64_t> ahead_ ABSL_GUARDED_BY(mu_);
  grpc::ByteBuffer response_bytes_;  // written only while no write is in flight (!writing_)
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t ack_wanted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ack_sent_ ABSL_GUARDED_BY(mu_) = 0;
  bool resend_ack_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> finish_status_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

// One WatchFindings call: findings the hub publishes are queued and written one at a time.
//
// Threading: the hub's sink (ingest thread) and the write reactions (gRPC threads) share the
// queue under mu_; reactor calls are made outside it. Unsubscribes before deleting itself in
// OnDone, so the sink never runs on a deleted reactor.
class WatchReactor final : public grpc::ServerWriteReactor<Finding> {
 public:
  WatchReactor(FindingHub* hub, FindingQuery filter) : hub_(hub) {
    subscription_ = hub_->Subscribe(std::move(filter), [this](const Finding& f) { OnFinding(f); });
  }

  void OnWriteDone(bool ok) override {
    const Finding* write = nullptr;
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      queue_.pop_front();
      if (!ok && !finish_status_) finish_status_ = grpc::Status::CANCELLED;
      Decide(&write, &finish);
    }
    if (write != nullptr) StartWrite(write);
    if (finish) Finish(*finish);
  }

  void OnCancel() override {
    std::optional<grpc::Status> finish;
    const Finding* write = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (!finish_status_) finish_status_ = grpc::Status::CANCELLED;
      Decide(&write, &finish);
    }
    if (finish) Finish(*finish);
  }

  void OnDone() override {
    hub_->Unsubscribe(subscription_);
    delete this;
  }

 private:
  // On the ingest thread, inside the hub's Publish.
  void OnFinding(const Finding& finding) {
    const Finding* write = nullptr;
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      if (finish_status_) return;
      if (queue_.size() >= kMaxWatchBacklog) {
        finish_status_ = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                      "watcher fell behind; list the gap and watch again");
      } else {
        queue_.push_back(finding);
      }
      Decide(&write, &finish);
    }
    if (write != nullptr) StartWrite(write);
    if (finish) Finish(*finish);
  }

  void Decide(const Finding** write, std::optional<grpc::Status>* finish)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_) return;
    if (finish_status_) {
      finished_ = true;
      *finish = *finish_status_;
      return;
    }
    if (!queue_.empty()) {
      writing_ = true;
      *write = &queue_.front();
    }
  }

  FindingHub* const hub_;
  uint64_t subscription_ = 0;
  absl::Mutex mu_;
  // The front is the finding being written while writing_; it is not touched until written.
  std::deque<Finding> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> finish_status_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* CollectorService::Report(
    grpc::CallbackServerContext* context) {
  return new ReportReactor(&ingest_, metrics_, context, options_.verify_node_names);
}

grpc::ServerUnaryReactor* CollectorService::ListFindings(
    grpc::CallbackServerContext* context, const tokenwatch::v1::ListFindingsRequest* request,
    tokenwatch::v1::ListFindingsResponse* response) {
  RequestTimer timer(metrics_, "ListFindings");
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<FindingQuery> query = QueryFromRequest(*request);
  if (!query.ok()) {
    reactor->Finish(ToGrpc(query.status()));
    return reactor;
  }
  absl::StatusOr<FindingPage> page = store_->ListPage(*query);
  if (!page.ok()) {
    reactor->Finish(ToGrpc(page.status()));
    return reactor;
  }
  for (Finding& f : page->findings) *response->add_findings() = std::move(f);
  response->set_next_page_token(page->next_page_token);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<Finding>* CollectorService::WatchFindings(
    grpc::CallbackServerContext* context, const tokenwatch::v1::WatchFindingsRequest* request) {
  (void)context;
  absl::StatusOr<FindingQuery> query = QueryFromRequest(*request);
  if (!query.ok()) {
    // A reactor that finishes at once with the error.
    class Refuse final : public grpc::ServerWriteReactor<Finding> {
     public:
      explicit Refuse(grpc::Status status) { Finish(std::move(status)); }
      void OnDone() override { delete this; }
    };
    return new Refuse(ToGrpc(query.status()));
  }
  return new WatchReactor(&hub_, *std::move(query));
}

grpc::ServerUnaryReactor* CollectorService::GetFinding(
    grpc::CallbackServerContext* context, const tokenwatch::v1::GetFindingRequest* request,
    Finding* response) {
  RequestTimer timer(metrics_, "GetFinding");
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (!IsUuid(request->id())) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "id: not a UUID"));
    return reactor;
  }
  absl::StatusOr<Finding> finding = store_->Get(request->id());
  if (!finding.ok()) {
    reactor->Finish(ToGrpc(finding.status()));
    return reactor;
  }
  *response = std::move(*finding);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

absl::StatusOr<RunningServer> StartServer(const std::string& listen, CollectorService* service,
                                          const ServerTls* tls) {
  RunningServer running;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (tls != nullptr) {
    grpc::SslServerCredentialsOptions ssl(
        tls->client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                               : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = tls->client_ca;
    ssl.pem_key_cert_pairs.push_back({tls->private_key, tls->cert_chain});
    credentials = grpc::SslServerCredentials(ssl);
  }
  grpc::ServerBuilder builder;
  // Without this, a second collector on the same port would silently share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  builder.AddListeningPort(listen, credentials, &running.port);
  builder.RegisterService(service);
  running.server = builder.BuildAndStart();
  if (!running.server || running.port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen));
  }
  return running;
}

}  // namespace tokenwatch::collector
