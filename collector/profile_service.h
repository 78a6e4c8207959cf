#pragma once

#include <grpcpp/support/server_callback.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "collector/collector_metrics.h"
#include "collector/profile_store.h"
#include "tokenwatch/v1/collector.pb.h"

namespace tokenwatch::collector {

// Checks an upload before anything is stored: node present and a valid name, every profile
// valid (common/profile_policy.h: ValidateProfile), naming the uploading node or none,
// at most one per (namespace, workload, container), at most kMaxProfilesPerUpload of them.
// InvalidArgument naming the field, e.g. "profiles[2].workload: empty".
absl::Status ValidateUploadProfilesRequest(const tokenwatch::v1::UploadProfilesRequest& request,
                                           absl::Time now);

// Turns ListProfiles filters into a store query; InvalidArgument for an overlong or
// control-character filter.
absl::StatusOr<ProfileQuery> ProfileQueryFromRequest(
    const tokenwatch::v1::ListProfilesRequest& request);

// The learned-profile RPCs of tokenwatch.v1.Collector (UploadProfiles, ListProfiles), which
// CollectorService serves with gRPC's default unary reactor. Owns nothing: the store and the
// metrics must outlive it.
//
// Threading: gRPC calls both from any of its threads, concurrently; the store is thread-safe
// and this holds no state of its own.
class ProfileRpcs {
 public:
  // `store` may be null: both RPCs then answer UNIMPLEMENTED. `verify_node_names` as in
  // CollectorService::Options: an upload must come from a certificate naming its node.
  ProfileRpcs(ProfileStore* store, bool verify_node_names, CollectorMetrics* metrics)
      : store_(store), verify_node_names_(verify_node_names), metrics_(metrics) {}

  grpc::ServerUnaryReactor* Upload(grpc::CallbackServerContext* context,
                                   const tokenwatch::v1::UploadProfilesRequest* request,
                                   tokenwatch::v1::UploadProfilesResponse* response);
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* context,
                                 const tokenwatch::v1::ListProfilesRequest* request,
                                 tokenwatch::v1::ListProfilesResponse* response);

 private:
  ProfileStore* const store_;
  const bool verify_node_names_;
  CollectorMetrics* const metrics_;
};

}  // namespace tokenwatch::collector
