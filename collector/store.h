#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tokenwatch/v1/finding.pb.h"

namespace tokenwatch::collector {

// Filters for FindingStore::List. Empty or default fields do not filter.
struct FindingQuery {
  // Only findings whose last_seen is at or after this time.
  absl::Time since = absl::InfinitePast();
  // Only findings at least this severe.
  tokenwatch::v1::Severity min_severity = tokenwatch::v1::SEVERITY_UNSPECIFIED;
  // Exact rule id, e.g. "TW002".
  std::string rule_id;
  // Matches the token owner's namespace or the actor pod's namespace.
  std::string namespace_name;
  // Exact node name.
  std::string node;
  // Only findings whose last_seen is before this time.
  absl::Time until = absl::InfiniteFuture();
  // Matches the token owner's pod name or the actor's pod name.
  std::string pod;
  // At most this many rows; 0 means kDefaultListLimit, larger than kMaxListLimit is capped.
  uint32_t limit = 0;
  // Continue after the page that returned this token (FindingPage::next_page_token).
  std::string page_token;
};

// One page of FindingStore::ListPage.
struct FindingPage {
  // Newest first.
  std::vector<tokenwatch::v1::Finding> findings;
  // Non-empty when older matching findings remain: pass it as FindingQuery::page_token.
  std::string next_page_token;
};

// One finding as the store keeps it: the columns queries filter on, and the whole Finding
// serialized. Built on the receiving thread, so the committer only binds and steps.
struct StoredFinding {
  std::string id;  // lower case: ids compare case-insensitively
  std::string node;
  int64_t time_ns = 0;
  int64_t last_seen_ns = 0;  // last_seen, or time when the finding has none
  std::string rule_id;
  int severity = 0;
  std::string owner_namespace;
  std::string actor_namespace;
  std::string owner_pod;
  std::string actor_pod;
  int64_t count = 0;
  // The serialized Finding: the bytes the agent sent, or `finding` serialized again.
  std::string payload;
};

// The stored form of a validated `finding`. `payload` must parse to `finding` (the agent's own
// bytes of it); when empty, the finding is serialized.
StoredFinding ToStored(const tokenwatch::v1::Finding& finding, std::string payload = "");

// Whether `finding` passes the query's filters (limit and paging aside); what WatchFindings
// applies to live findings, with the same meaning as List's SQL.
bool MatchesQuery(const FindingQuery& query, const tokenwatch::v1::Finding& finding);

// FindingStore owns the collector's SQLite database: one table of findings keyed by id, with
// the columns the queries filter on and the whole Finding as a serialized proto.
//
// Threading: every method is safe to call from any thread. Writes go through one connection
// under write_mu_; reads use a second connection under read_mu_, so in WAL mode a query never
// waits for a commit's fsync.
//
// Durability: the database runs in WAL mode with synchronous=FULL. The collector acks a finding
// to the agent once Upsert returns, and the agent then deletes it from its spool, so a
// committed transaction must survive a power cut; synchronous=NORMAL in WAL mode may lose the
// last commits on power loss, which would silently drop acked findings. Callers batch several
// findings per Upsert to pay one fsync for many.
class FindingStore {
 public:
  static constexpr uint32_t kDefaultListLimit = 100;
  static constexpr uint32_t kMaxListLimit = 10000;

  // Opens (creating if needed) the database at `path`, sets WAL mode and the schema.
  static absl::StatusOr<std::unique_ptr<FindingStore>> Open(const std::string& path);

  ~FindingStore();
  FindingStore(const FindingStore&) = delete;
  FindingStore& operator=(const FindingStore&) = delete;

  // Stores the findings in one transaction. A finding whose id is already stored is replaced
  // only when it carries a higher count or a later last_seen (a fold that grew), or a raised
  // severity at no lower count; re-sending the same finding changes nothing. Findings must already be validated (see validate.h).
  // When `changed` is given, it gets one flag per finding: whether the row was inserted or
  // updated (false for an identical re-send).
  absl::Status Upsert(const std::vector<const StoredFinding*>& findings,
                      std::vector<bool>* changed = nullptr) ABSL_LOCKS_EXCLUDED(write_mu_);
  absl::Status Upsert(const std::vector<const tokenwatch::v1::Finding*>& findings)
      ABSL_LOCKS_EXCLUDED(write_mu_);
  absl::Status Upsert(const tokenwatch::v1::Finding& finding) ABSL_LOCKS_EXCLUDED(write_mu_);

  // Matching findings, newest (by last_seen, then id) first: the first page of ListPage.
  absl::StatusOr<std::vector<tokenwatch::v1::Finding>> List(const FindingQuery& query)
      ABSL_LOCKS_EXCLUDED(read_mu_);

  // One page of matching findings. InvalidArgument for a page token this store did not make.
  absl::StatusOr<FindingPage> ListPage(const FindingQuery& query) ABSL_LOCKS_EXCLUDED(read_mu_);

  // One finding by id (case-insensitive); NotFound if absent.
  absl::StatusOr<tokenwatch::v1::Finding> Get(const std::string& id)
      ABSL_LOCKS_EXCLUDED(read_mu_);

  // The journal mode SQLite reports ("wal" when open succeeded); for tests and diagnostics.
  absl::StatusOr<std::string> JournalMode() ABSL_LOCKS_EXCLUDED(read_mu_);

  // The plan SQLite picks for ListPage(query), one EXPLAIN QUERY PLAN line each (e.g. "SEARCH
  // findings USING INDEX findings_by_node (node=? AND last_seen_ns>? AND last_seen_ns<?)"); for
  // tests that pin a filter to its index, and for diagnosing a slow query.
  absl::StatusOr<std::string> QueryPlan(const FindingQuery& query) ABSL_LOCKS_EXCLUDED(read_mu_);

 private:
  FindingStore(sqlite3* write_db, sqlite3* read_db) : write_db_(write_db), read_db_(read_db) {}

  absl::Mutex write_mu_;
  sqlite3* const write_db_ ABSL_PT_GUARDED_BY(write_mu_);
  // The upsert statement, prepared once (finalized in the destructor).
  sqlite3_stmt* upsert_ ABSL_GUARDED_BY(write_mu_) = nullptr;
  absl::Mutex read_mu_;
  sqlite3* const read_db_ ABSL_PT_GUARDED_BY(read_mu_);
};

}  // namespace tokenwatch::collector
