#pragma once

#include <sqlite3.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/profile_policy.h"
#include "tokenwatch/v1/collector.pb.h"

namespace tokenwatch::collector {

// Filters for ProfileStore::List; empty fields do not filter.
struct ProfileQuery {
  // Exact namespace.
  std::string namespace_name;
  // fnmatch(3) glob on the workload name, as in the agent's policy ('*' also matches '/').
  std::string workload_glob;
  // Exact node name.
  std::string node;
  // At most this many profiles; 0 means kDefaultListLimit, larger than kMaxListLimit is capped.
  uint32_t limit = 0;
  // Continue after the page that returned this token (ProfilePage::next_page_token).
  std::string page_token;
};

// One page of ProfileStore::List.
struct ProfilePage {
  // Ordered by namespace, workload, container, node.
  std::vector<tokenwatch::v1::LearnedProfile> profiles;
  // Non-empty when more matching profiles remain: pass it as ProfileQuery::page_token.
  std::string next_page_token;
};

// ProfileStore owns the `profiles` table of the collector's SQLite database (the file the
// FindingStore uses, through a connection of its own): every node's copy of every workload
// profile its agent learned, keyed by (namespace, workload, container, node), the whole
// LearnedProfile kept as a serialized proto.
//
// Uploads are rare (an agent sends at most one a minute), so one connection under one mutex
// serves both writes and reads; WAL mode (both stores' Open insist on it) keeps it from
// blocking the findings' ingest for longer than a commit.
//
// Threading: every method is safe to call from any thread.
class ProfileStore {
 public:
  static constexpr uint32_t kDefaultListLimit = 1000;
  static constexpr uint32_t kMaxListLimit = 10000;
  // The longest page token List makes: the web-safe base64 of the longest key a validated
  // upload can store (three names, a container path, three separators). A longer token is
  // not one of ours, and is refused before it is decoded.
  static constexpr size_t kMaxPageTokenBytes =
      4 * ((3 * profiles::kMaxNameBytes + profiles::kMaxPathBytes + 3 + 2) / 3);

  // Opens (creating if needed) the database at `path` and the profiles table.
  static absl::StatusOr<std::unique_ptr<ProfileStore>> Open(const std::string& path);

  ~ProfileStore();
  ProfileStore(const ProfileStore&) = delete;
  ProfileStore& operator=(const ProfileStore&) = delete;

  // Replaces everything stored for `node` with `profiles`, in one transaction, stamping each
  // with the node and `now` as its updated time. The profiles must be validated (at most one
  // per namespace, workload and container; see profile_service.h).
  absl::Status ReplaceNode(const std::string& node,
                           const std::vector<tokenwatch::v1::LearnedProfile>& profiles,
                           absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

  // One page of matching profiles. InvalidArgument for a page token this store did not make.
  absl::StatusOr<ProfilePage> List(const ProfileQuery& query) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit ProfileStore(sqlite3* db) : db_(db) {}

  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace tokenwatch::collector
