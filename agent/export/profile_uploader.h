#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/export/collector_channel.h"
#include "tokenwatch/v1/collector.grpc.pb.h"

namespace tokenwatch::exporting {

// Keeps the collector's copy of this node's learned profiles current, so that profiles can be
// reviewed and exported centrally (tokenwatchctl profile export) and merged across the nodes a
// workload runs on. Each upload carries every profile (UploadProfiles replaces the node's
// copy), so a lost or repeated upload needs no bookkeeping: the next one repairs it.
//
// Uploads happen at the first Tick (startup), then when the profiles changed since the last
// accepted upload, at most once per `interval`; a failed upload is retried after `interval`.
// Profiles the collector would refuse are trimmed first (over-long lists, paths with control
// characters), with a warning naming how many, so one odd workload cannot block the node's
// uploads.
//
// Threading: Tick() and Stop() from one thread (the agent's event loop); they never wait on the
// network except Stop() for its `drain`. The call completes on a gRPC thread; stats() from any
// thread.
class ProfileUploader {
 public:
  struct Options {
    CollectorChannelOptions channel;
    std::string node;
    std::string agent_id;
    // At most one upload per interval.
    absl::Duration interval = absl::Minutes(1);
    // Deadline of one upload call.
    absl::Duration timeout = absl::Seconds(30);
  };
  // Where the profiles come from (the learned baseline): a counter that grows with every change,
  // and the profiles themselves. Called on the Tick() thread.
  struct Source {
    std::function<uint64_t()> generation;
    std::function<std::vector<v1::LearnedProfile>()> profiles;
  };
  struct Stats {
    uint64_t uploads = 0;   // accepted by the collector
    uint64_t failures = 0;  // refused or failed calls
  };

  // Reads the TLS files; fails with a message naming the config key and file.
  static absl::StatusOr<std::unique_ptr<ProfileUploader>> Create(Options options, Source source);
  ~ProfileUploader();

  void Tick(absl::Time now);
  // Uploads what changed since the last accepted upload (if the collector answers within
  // `drain`), then cancels any call still in flight and waits for it to end.
  void Stop(absl::Duration drain = absl::Seconds(2));

  Stats stats() const;

  // The upload for `profiles`: each within the collector's bounds (agent/detect/
  // profile_policy.h), the request under kMaxUploadBytes. `trimmed` counts what was left out.
  static v1::UploadProfilesRequest BuildRequest(const std::string& node,
                                                const std::string& agent_id,
                                                std::vector<v1::LearnedProfile> profiles,
                                                absl::Time now, uint64_t* trimmed);

 private:
  struct Call;
  ProfileUploader(Options options, Source source, std::shared_ptr<grpc::Channel> channel);
  // Starts an upload of the current profiles.
  void StartUpload(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  void OnDone(Call* call, const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  const Source source_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Collector::Stub> stub_;
  absl::Time next_attempt_ = absl::InfinitePast();  // Tick thread only

  mutable absl::Mutex mu_;
  // The call in flight; once done, kept until the Tick thread frees it (a context is not
  // destroyed inside its own completion).
  std::unique_ptr<Call> call_ ABSL_GUARDED_BY(mu_);
  bool call_done_ ABSL_GUARDED_BY(mu_) = false;
  // The generation of the last accepted upload; none before the first.
  std::optional<uint64_t> uploaded_generation_ ABSL_GUARDED_BY(mu_);
  bool failing_ ABSL_GUARDED_BY(mu_) = false;  // the last call failed (logged once)
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tokenwatch::exporting
