#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "tokenwatch/v1/collector.pb.h"

// Learned profiles as policy: what `tokenwatch-agent --export-profile` (one node's profiles)
// and `tokenwatchctl profile export` (every node's copies, merged) print. Both binaries link
// this, so the policy they propose is the same document, in the schema the agent's `policy:`
// key accepts (README, "Schema").
namespace tokenwatch::profiles {

// Bounds on one upload (UploadProfilesRequest). The collector refuses a request beyond them;
// the agent trims to them before sending, so one odd workload cannot block a node's uploads.
inline constexpr int kMaxProfilesPerUpload = 10000;
inline constexpr int kMaxExecutablesPerList = 1024;
inline constexpr size_t kMaxPathBytes = 4096;
// Kubernetes names (namespace, workload, service account, node) are at most 253 bytes.
inline constexpr size_t kMaxNameBytes = 253;
// The collector's receive limit is 4 MiB; an upload stays clear of it.
inline constexpr size_t kMaxUploadBytes = 3 * 1024 * 1024;

// Checks one profile of an upload against the bounds above: namespace and workload present,
// names and paths bounded and free of control characters (they end up in YAML and on
// terminals), at most kMaxExecutablesPerList entries per list, learning_started and
// learning_ends set and valid Timestamps, learning_started neither before kEarliestSaneTime
// nor more than kMaxClockSkew after `now` (common/wire_time.h, the bounds the collector
// applies to a finding's times), learning_ends not before it.
// The node is the caller's business. InvalidArgument naming the field with `field` in front,
// e.g. "profiles[3].token_readers[2].path: longer than 4096 bytes".
absl::Status ValidateProfile(const v1::LearnedProfile& profile, const std::string& field,
                             absl::Time now);

// Checks an executable's or container's path: at most kMaxPathBytes, no control characters,
// and present when `required`.
absl::Status ValidatePath(const std::string& field, const std::string& path, bool required);

// Checks a name (namespace, workload, service account, node): at most kMaxNameBytes, no control
// characters, and present when `required`.
absl::Status ValidateName(const std::string& field, const std::string& value, bool required);

// One workload container's profile, merged over the nodes that learned it.
struct WorkloadProfile {
  // The union of every copy's executables (sorted, unique); learning_started is the earliest
  // copy's, learning_ends the latest's. service_account is kept only when every copy names
  // the same one; node and updated are empty.
  v1::LearnedProfile merged;
  // The nodes the copies came from (sorted, unique; empty names are left out).
  std::vector<std::string> nodes;
  // How many copies were merged, and how many of them were still learning at `now`.
  size_t copies = 0;
  size_t still_learning = 0;
};

// Timestamp <-> absl::Time for the profile's times (nanosecond precision, UTC).
absl::Time TimeOf(const google::protobuf::Timestamp& ts);
void SetTime(absl::Time t, google::protobuf::Timestamp* ts);

// Whether `profile`'s window is open at `now`: learning on and learning_ends not reached.
bool StillLearning(const v1::LearnedProfile& profile, absl::Time now);

// Groups `profiles` by (namespace, workload, container) and merges each group, ordered by
// that key.
std::vector<WorkloadProfile> MergeProfiles(const std::vector<v1::LearnedProfile>& profiles,
                                           absl::Time now);

// A `policy:` document with one `workloads` entry per merged profile: its exact selectors, the
// token readers known by full path as `executables`, `apiserver_contact: true` where a contact
// was learned, and a comment saying where and when it was learned and whether learning is
// complete (as of the `now` given to MergeProfiles). Ends with a newline.
std::string RenderPolicyYaml(const std::vector<WorkloadProfile>& workloads);

}  // namespace tokenwatch::profiles
