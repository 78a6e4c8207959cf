#include "collector/service.h"

#include <cstdint>
#include <cstdio>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "collector/validate.h"

namespace tokenwatch::collector {
namespace {

using tokenwatch::v1::Finding;
using tokenwatch::v1::ReportRequest;
using tokenwatch::v1::ReportResponse;

// How many stored findings may sit above a gap in the sequence before we give up on the stream:
// bounds the memory one misbehaving agent can hold.
constexpr size_t kMaxOutOfOrder = 65536;

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// One agent's Report stream. Reads one message at a time, stores each finding before reading
// the next, and acks the highest contiguous sequence stored. At most one write is in flight;
// acks that become due meanwhile collapse into the next write, which always carries the newest
// contiguous sequence.
//
// Threading: the read path (OnReadDone) is serial by construction (one read outstanding) and
// owns the read-side fields; OnWriteDone may run concurrently with it, so everything both touch
// is under mu_. Reactor calls are made outside mu_. Deletes itself in OnDone.
class ReportReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  ReportReactor(FindingStore* store, std::string peer) : store_(store), peer_(std::move(peer)) {
    StartRead(&request_bytes_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The agent half-closed or went away; flush the last ack if we still can, then finish.
      RequestFinish(grpc::Status::OK);
      return;
    }
    if (absl::Status s = HandleRequest(); !s.ok()) {
      std::fprintf(stderr, "tokenwatch-collector: report from %s (node %s): %s\n", peer_.c_str(),
                   node_.empty() ? "?" : node_.c_str(), std::string(s.message()).c_str());
      RequestFinish(ToGrpc(s));
      return;
    }
    StartRead(&request_bytes_);
  }

  void OnWriteDone(bool ok) override {
    std::optional<grpc::Status> finish;
    bool write = false;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      // A failed write means the stream is broken: no more acks can reach the agent. The
      // outstanding read fails too and the read path then finishes; finishing here could let
      // OnDone delete this while the read path still runs.
      if (!ok) broken_ = true;
      write = !broken_ && PrepareAckLocked();
      if (!write && finish_status_ && !finished_) {
        finished_ = true;
        finish = *finish_status_;
      }
    }
    if (write) StartWrite(&response_bytes_);
    if (finish) Finish(*finish);
  }

  void OnDone() override { delete this; }

 private:
  // Processes request_bytes_; an error finishes the stream with that status.
  absl::Status HandleRequest() {
    if (!grpc::SerializationTraits<ReportRequest>::Deserialize(&request_bytes_, &request_).ok()) {
      return absl::InvalidArgumentError("request: not a serialized ReportRequest");
    }
    if (request_.has_hello()) {
      if (hello_seen_) return absl::InvalidArgumentError("hello: sent twice on one stream");
      if (request_.hello().node().empty()) return absl::InvalidArgumentError("hello.node: empty");
      if (request_.hello().agent_id().empty()) {
        return absl::InvalidArgumentError("hello.agent_id: empty");
      }
      hello_seen_ = true;
      node_ = request_.hello().node();
      return absl::OkStatus();
    }
    if (!hello_seen_) {
      return absl::InvalidArgumentError("the first message of a Report stream must be a Hello");
    }
    if (!request_.has_finding()) return absl::InvalidArgumentError("request: neither hello nor finding");
    const uint64_t seq = request_.finding().sequence();
    if (seq == 0) return absl::InvalidArgumentError("finding.sequence: must be at least 1");
    if (!request_.finding().has_finding()) {
      return absl::InvalidArgumentError("finding.finding: not set");
    }
    const Finding& finding = request_.finding().finding();
    if (absl::Status s = ValidateFinding(finding, absl::Now()); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", seq, ": ", s.message()));
    }
    if (absl::Status s = store_->Upsert(finding); !s.ok()) {
      // The agent keeps the finding in its spool and re-sends it on its next stream.
      return absl::UnavailableError(absl::StrCat("store finding: ", s.message()));
    }

    bool resend = false;
    if (!run_started_) {
      run_started_ = true;
      contiguous_ = seq;
    } else if (seq == contiguous_ + 1) {
      contiguous_ = seq;
    } else if (seq <= contiguous_) {
      // A re-send of something already acked: the agent may have missed our ack.
      resend = true;
    } else {
      ahead_.insert(seq);
      if (ahead_.size() > kMaxOutOfOrder) {
        return absl::ResourceExhaustedError("finding.sequence: too many findings after a gap");
      }
    }
    while (!ahead_.empty() && *ahead_.begin() <= contiguous_ + 1) {
      contiguous_ = std::max(contiguous_, *ahead_.begin());
      ahead_.erase(ahead_.begin());
    }

    bool write = false;
    {
      absl::MutexLock lock(&mu_);
      ack_wanted_ = contiguous_;
      resend_ack_ = resend_ack_ || resend;
      write = !writing_ && !broken_ && PrepareAckLocked();
    }
    if (write) StartWrite(&response_bytes_);
    return absl::OkStatus();
  }

  // Fills response_ and marks a write in flight when an ack is due. The caller starts the write.
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

  // Finishes now, or after the write in flight (and any ack still due) completes.
  void RequestFinish(grpc::Status status) {
    grpc::Status finish;
    {
      absl::MutexLock lock(&mu_);
      if (!finish_status_) finish_status_ = std::move(status);
      if (writing_ || finished_) return;
      finished_ = true;
      finish = *finish_status_;
    }
    Finish(finish);
  }

  FindingStore* const store_;
  const std::string peer_;

  // Read path only.
  grpc::ByteBuffer request_bytes_;
  ReportRequest request_;
  bool hello_seen_ = false;
  std::string node_;
  bool run_started_ = false;
  uint64_t contiguous_ = 0;
  std::set<uint64_t> ahead_;

  absl::Mutex mu_;
  grpc::ByteBuffer response_bytes_;  // written only while no write is in flight (!writing_)
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t ack_wanted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ack_sent_ ABSL_GUARDED_BY(mu_) = 0;
  bool resend_ack_ ABSL_GUARDED_BY(mu_) = false;
  // Set once, by the read path, as its last act; Finish is called only after that, so OnDone
  // (which deletes this) cannot run while the read path is still inside a reaction.
  std::optional<grpc::Status> finish_status_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* CollectorService::Report(
    grpc::CallbackServerContext* context) {
  return new ReportReactor(store_, context->peer());
}

grpc::ServerUnaryReactor* CollectorService::ListFindings(
    grpc::CallbackServerContext* context, const tokenwatch::v1::ListFindingsRequest* request,
    tokenwatch::v1::ListFindingsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (!tokenwatch::v1::Severity_IsValid(request->min_severity())) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "min_severity: unknown severity"));
    return reactor;
  }
  FindingQuery query;
  if (request->has_since()) {
    const auto& since = request->since();
    if (since.nanos() < 0 || since.nanos() > 999999999) {
      reactor->Finish(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "since: nanos out of range"));
      return reactor;
    }
    query.since = absl::FromUnixSeconds(since.seconds()) + absl::Nanoseconds(since.nanos());
  }
  query.min_severity = request->min_severity();
  query.rule_id = request->rule_id();
  query.namespace_name = request->namespace_();
  query.node = request->node();
  query.limit = request->limit();
  absl::StatusOr<std::vector<Finding>> findings = store_->List(query);
  if (!findings.ok()) {
    reactor->Finish(ToGrpc(findings.status()));
    return reactor;
  }
  for (Finding& f : *findings) *response->add_findings() = std::move(f);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* CollectorService::GetFinding(
    grpc::CallbackServerContext* context, const tokenwatch::v1::GetFindingRequest* request,
    Finding* response) {
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

absl::StatusOr<RunningServer> StartServer(const std::string& listen, CollectorService* service) {
  RunningServer running;
  grpc::ServerBuilder builder;
  // Without this, a second collector on the same port would silently share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &running.port);
  builder.RegisterService(service);
  running.server = builder.BuildAndStart();
  if (!running.server || running.port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen));
  }
  return running;
}

}  // namespace tokenwatch::collector
