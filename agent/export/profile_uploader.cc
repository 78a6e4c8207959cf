#include "agent/export/profile_uploader.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/profile_policy.h"

namespace tokenwatch::exporting {

struct ProfileUploader::Call {
  grpc::ClientContext context;
  v1::UploadProfilesRequest request;
  v1::UploadProfilesResponse response;
  uint64_t generation = 0;
};

namespace {

// Drops the entries of `list` the collector would refuse, and any beyond its bound.
void TrimExecutables(google::protobuf::RepeatedPtrField<v1::LearnedExecutable>* list,
                     uint64_t* trimmed) {
  google::protobuf::RepeatedPtrField<v1::LearnedExecutable> kept;
  for (v1::LearnedExecutable& exe : *list) {
    if (kept.size() >= profiles::kMaxExecutablesPerList ||
        !profiles::ValidatePath("path", exe.path(), /*required=*/true).ok()) {
      ++*trimmed;
      continue;
    }
    *kept.Add() = std::move(exe);
  }
  list->Swap(&kept);
}

}  // namespace

v1::UploadProfilesRequest ProfileUploader::BuildRequest(const std::string& node,
                                                        const std::string& agent_id,
                                                        std::vector<v1::LearnedProfile> profiles,
                                                        absl::Time now, uint64_t* trimmed) {
  v1::UploadProfilesRequest request;
  request.set_node(node);
  request.set_agent_id(agent_id);
  size_t bytes = request.ByteSizeLong();
  for (v1::LearnedProfile& p : profiles) {
    TrimExecutables(p.mutable_token_readers(), trimmed);
    TrimExecutables(p.mutable_apiserver_clients(), trimmed);
    // What is still wrong is in the profile's identity (a name with a control character):
    // the collector could not key it, so it stays on the node.
    const size_t size = p.ByteSizeLong() + 8;  // the field's tag and length
    if (request.profiles_size() >= profiles::kMaxProfilesPerUpload ||
        bytes + size > profiles::kMaxUploadBytes ||
        !profiles::ValidateProfile(p, "profile", now).ok()) {
      ++*trimmed;
      continue;
    }
    bytes += size;
    *request.add_profiles() = std::move(p);
  }
  return request;
}

absl::StatusOr<std::unique_ptr<ProfileUploader>> ProfileUploader::Create(Options options,
                                                                         Source source) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeCollectorChannel(options.channel);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<ProfileUploader>(
      new ProfileUploader(std::move(options), std::move(source), *std::move(channel)));
}

ProfileUploader::ProfileUploader(Options options, Source source,
                                 std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      source_(std::move(source)),
      channel_(std::move(channel)),
      stub_(v1::Collector::NewStub(channel_)) {}

ProfileUploader::~ProfileUploader() { Stop(absl::ZeroDuration()); }

void ProfileUploader::Tick(absl::Time now) {
  {
    absl::MutexLock lock(&mu_);
    if (call_ != nullptr && !call_done_) return;  // one call at a time
    call_.reset();
    if (now < next_attempt_) return;
    if (uploaded_generation_.has_value() && *uploaded_generation_ == source_.generation()) return;
  }
  next_attempt_ = now + options_.interval;
  StartUpload(now);
}

void ProfileUploader::StartUpload(absl::Time now) {
  auto call = std::make_unique<Call>();
  // The generation is read before the profiles: a change in between is uploaded again later,
  // never missed.
  call->generation = source_.generation();
  uint64_t trimmed = 0;
  call->request = BuildRequest(options_.node, options_.agent_id, source_.profiles(), now, &trimmed);
  call->context.set_deadline(std::chrono::system_clock::now() +
                             absl::ToChronoSeconds(options_.timeout));
  Call* raw = call.get();
  {
    absl::MutexLock lock(&mu_);
    call_ = std::move(call);
    call_done_ = false;
  }
  if (trimmed > 0) {
    Logf(LogLevel::kWarning,
         "profile upload: %d profiles or executables left out (beyond the collector's bounds)",
         trimmed);
  }
  stub_->async()->UploadProfiles(&raw->context, &raw->request, &raw->response,
                                 [this, raw](grpc::Status status) { OnDone(raw, status); });
}

void ProfileUploader::OnDone(Call* call, const grpc::Status& status) {
  absl::MutexLock lock(&mu_);
  call_done_ = true;
  if (status.ok()) {
    ++stats_.uploads;
    uploaded_generation_ = call->generation;
    if (failing_ || stats_.uploads == 1) {
      Logf(LogLevel::kInfo, "profile upload: %d learned profiles stored at the collector %s",
           call->request.profiles_size(), options_.channel.address);
    }
    failing_ = false;
    return;
  }
  ++stats_.failures;
  // Once per outage, not every minute: the findings stream already says the collector is down.
  if (!failing_) {
    Logf(LogLevel::kWarning, "profile upload to %s failed (%s: %s); retrying every %s",
         options_.channel.address, static_cast<int>(status.error_code()), status.error_message(),
         absl::FormatDuration(options_.interval));
  }
  failing_ = true;
}

void ProfileUploader::Stop(absl::Duration drain) {
  const absl::Time deadline = absl::Now() + drain;
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return call_ == nullptr || call_done_; };
  bool upload = false;
  {
    absl::MutexLock lock(&mu_);
    if (drain > absl::ZeroDuration()) {
      mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
      // What was learned since the last upload would otherwise wait for the next start.
      upload = idle() &&
               (!uploaded_generation_.has_value() || *uploaded_generation_ != source_.generation());
    }
  }
  if (upload) StartUpload(absl::Now());
  absl::MutexLock lock(&mu_);
  if (drain > absl::ZeroDuration()) mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
  if (call_ != nullptr && !call_done_) {
    call_->context.TryCancel();
    mu_.Await(absl::Condition(&idle));  // a cancelled call completes promptly
  }
  call_.reset();
}

ProfileUploader::Stats ProfileUploader::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace tokenwatch::exporting
