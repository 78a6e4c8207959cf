#include "collector/store.h"

#include <algorithm>
#include <limits>
#include <utility>
#include <variant>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "collector/sqlite_util.h"

namespace tokenwatch::collector {
namespace {

using tokenwatch::v1::Finding;

// Nanoseconds since the Unix epoch. Validated findings have sane times, so this cannot
// overflow for them; anything else saturates.
int64_t UnixNanos(const google::protobuf::Timestamp& ts) {
  constexpr int64_t kMaxSeconds = std::numeric_limits<int64_t>::max() / 1000000000 - 1;
  int64_t seconds = std::clamp<int64_t>(ts.seconds(), -kMaxSeconds, kMaxSeconds);
  return seconds * 1000000000 + ts.nanos();
}

int64_t ClampCount(uint64_t count) {
  return static_cast<int64_t>(
      std::min<uint64_t>(count, static_cast<uint64_t>(std::numeric_limits<int64_t>::max())));
}

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS findings (
  id TEXT PRIMARY KEY NOT NULL,
  node TEXT NOT NULL,
  time_ns INTEGER NOT NULL,
  last_seen_ns INTEGER NOT NULL,
  rule_id TEXT NOT NULL,
  severity INTEGER NOT NULL,
  owner_namespace TEXT NOT NULL,
  actor_namespace TEXT NOT NULL,
  count INTEGER NOT NULL,
  finding BLOB NOT NULL,
  owner_pod TEXT NOT NULL DEFAULT '',
  actor_pod TEXT NOT NULL DEFAULT ''
);
)sql";

// Columns added after the first schema; ALTER fails harmlessly when they exist.
constexpr const char* kAddedColumns[] = {
    "ALTER TABLE findings ADD COLUMN owner_pod TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE findings ADD COLUMN actor_pod TEXT NOT NULL DEFAULT ''",
};

// Every index ends in (last_seen_ns, id), the list order, so that a page is read straight off
// the index without sorting and a filter that matches little or nothing costs a short index
// walk rather than a walk of the recency index. The namespace and pod filters match either of
// two columns; ListPage answers each as a merge of two such walks (see BuildList). Each index
// costs ingest one more b-tree insert; the ingest benchmark keeps that in view. On a database
// made before an index existed, CREATE INDEX builds it at open (seconds for a million rows).
constexpr char kIndexes[] = R"sql(
DROP INDEX IF EXISTS findings_last_seen;
DROP INDEX IF EXISTS findings_node;
DROP INDEX IF EXISTS findings_rule;
DROP INDEX IF EXISTS findings_owner_ns;
DROP INDEX IF EXISTS findings_actor_ns;
CREATE INDEX IF NOT EXISTS findings_recent ON findings(last_seen_ns, id);
CREATE INDEX IF NOT EXISTS findings_by_node ON findings(node, last_seen_ns, id);
CREATE INDEX IF NOT EXISTS findings_by_rule ON findings(rule_id, last_seen_ns, id);
CREATE INDEX IF NOT EXISTS findings_by_owner_ns ON findings(owner_namespace, last_seen_ns, id);
CREATE INDEX IF NOT EXISTS findings_by_actor_ns ON findings(actor_namespace, last_seen_ns, id);
CREATE INDEX IF NOT EXISTS findings_by_owner_pod ON findings(owner_pod, last_seen_ns, id);
CREATE INDEX IF NOT EXISTS findings_by_actor_pod ON findings(actor_pod, last_seen_ns, id);
)sql";

// The stored row is replaced only when the agent folded more events into the finding since the
// copy we hold; an identical re-send (the agent missed our ack) is a no-op.
constexpr char kUpsert[] = R"sql(
INSERT INTO findings (id, node, time_ns, last_seen_ns, rule_id, severity, owner_namespace,
                      actor_namespace, count, finding, owner_pod, actor_pod)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
ON CONFLICT(id) DO UPDATE SET
  last_seen_ns = excluded.last_seen_ns,
  severity = excluded.severity,
  count = excluded.count,
  finding = excluded.finding
WHERE excluded.count > findings.count OR excluded.last_seen_ns > findings.last_seen_ns
   OR (excluded.severity > findings.severity AND excluded.count >= findings.count)
)sql";

absl::StatusOr<std::vector<Finding>> ReadFindings(sqlite3* db, sqlite3_stmt* stmt) {
  std::vector<Finding> out;
  for (;;) {
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return SqliteError(db, "query findings");
    Finding finding;
    const void* blob = sqlite3_column_blob(stmt, 0);
    int size = sqlite3_column_bytes(stmt, 0);
    if (!finding.ParseFromArray(blob, size)) {
      return absl::DataLossError("stored finding does not parse");
    }
    out.push_back(std::move(finding));
  }
  return out;
}

// A list query's SQL, the values its parameters take (in order), and the page size.
struct ListStatement {
  std::string sql;
  std::vector<std::variant<int64_t, std::string>> args;
  uint32_t limit = 0;  // rows on a full page; the SQL asks for one more to see if more remain
};

// The SELECT for one page of `query`: the first page, or the one after the row its page token
// names. The limit is query.limit, kDefaultListLimit when 0, capped at kMaxListLimit.
// InvalidArgument for a page token this store did not hand out. ListPage runs the statement,
// QueryPlan explains it: both see the same SQL for the same query.
//
// Only the filters in use appear in the SQL, so SQLite can pick the index that serves them.
// A namespace or pod filter matches either of two columns; written as an OR, SQLite either
// walks the recency index testing every row (slow when few match) or collects every match and
// sorts (slow when many match). Written instead as two SELECTs, one per column, joined by
// UNION ALL under the list order, SQLite merges two walks of (column, last_seen_ns, id) indexes
// newest first and stops at the limit. The second SELECT leaves out rows the first one has, so
// a finding whose two columns both match appears once. When both filters are given, the pod
// (the narrower) is split that way and the namespace stays a plain OR.
absl::StatusOr<ListStatement> BuildList(const FindingQuery& query) {
  const bool paged = !query.page_token.empty();
  int64_t after_ns = 0;
  std::string after_id;
  if (paged) {
    // "<last_seen_ns>/<id>" of the last row of the previous page.
    std::vector<std::string> parts = absl::StrSplit(query.page_token, absl::MaxSplits('/', 1));
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &after_ns) || parts[1].size() > 64) {
      return absl::InvalidArgumentError("page_token: not a token from a previous page");
    }
    after_id = parts[1];
  }
  ListStatement out;
  out.limit = query.limit == 0 ? FindingStore::kDefaultListLimit
                               : std::min(query.limit, FindingStore::kMaxListLimit);
  int64_t since_ns = std::numeric_limits<int64_t>::min();
  if (query.since != absl::InfinitePast()) since_ns = absl::ToUnixNanos(query.since);
  int64_t until_ns = std::numeric_limits<int64_t>::max();
  if (query.until != absl::InfiniteFuture()) until_ns = absl::ToUnixNanos(query.until);
  // A later page holds nothing newer than the last row of the previous one: folding that into
  // the upper bound lets the index walk start there instead of at the newest row.
  if (paged && after_ns < until_ns) until_ns = after_ns + 1;

  std::string where = "last_seen_ns >= ? AND last_seen_ns < ?";
  std::vector<std::variant<int64_t, std::string>> args = {since_ns, until_ns};
  if (query.min_severity != tokenwatch::v1::SEVERITY_UNSPECIFIED) {
    absl::StrAppend(&where, " AND severity >= ", static_cast<int>(query.min_severity));
  }
  if (!query.rule_id.empty()) {
    absl::StrAppend(&where, " AND rule_id = ?");
    args.push_back(query.rule_id);
  }
  if (!query.node.empty()) {
    absl::StrAppend(&where, " AND node = ?");
    args.push_back(query.node);
  }
  // The two-column filter the merge splits on, if any: {owner column, actor column, value}.
  const char* split_owner = nullptr;
  const char* split_actor = nullptr;
  std::string split_value;
  if (!query.pod.empty()) {
    split_owner = "owner_pod";
    split_actor = "actor_pod";
    split_value = query.pod;
    if (!query.namespace_name.empty()) {
      absl::StrAppend(&where, " AND (owner_namespace = ? OR actor_namespace = ?)");
      args.push_back(query.namespace_name);
      args.push_back(query.namespace_name);
    }
  } else if (!query.namespace_name.empty()) {
    split_owner = "owner_namespace";
    split_actor = "actor_namespace";
    split_value = query.namespace_name;
  }
  if (paged) {
    absl::StrAppend(&where, " AND (last_seen_ns < ? OR (last_seen_ns = ? AND id < ?))");
    args.push_back(after_ns);
    args.push_back(after_ns);
    args.push_back(after_id);
  }
  const std::string select = "SELECT finding, last_seen_ns, id FROM findings WHERE ";
  if (split_owner == nullptr) {
    out.sql = absl::StrCat(select, where);
    out.args = std::move(args);
  } else {
    out.sql = absl::StrCat(select, where, " AND ", split_owner, " = ? UNION ALL ", select, where,
                           " AND ", split_actor, " = ? AND ", split_owner, " <> ?");
    out.args = args;
    out.args.push_back(split_value);
    out.args.insert(out.args.end(), args.begin(), args.end());
    out.args.push_back(split_value);
    out.args.push_back(split_value);
  }
  absl::StrAppend(&out.sql, " ORDER BY last_seen_ns DESC, id DESC LIMIT ", out.limit + 1);
  return out;
}

void BindAll(sqlite3_stmt* stmt, const ListStatement& list) {
  int index = 1;
  for (const auto& arg : list.args) {
    if (const int64_t* n = std::get_if<int64_t>(&arg)) {
      sqlite3_bind_int64(stmt, index++, *n);
    } else {
      const std::string& text = std::get<std::string>(arg);
      // `list` outlives the statement's steps, so SQLite need not copy.
      sqlite3_bind_text(stmt, index++, text.data(), static_cast<int>(text.size()),
                        SQLITE_STATIC);
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<FindingStore>> FindingStore::Open(const std::string& path) {
  absl::StatusOr<sqlite3*> write_db =
      OpenConnection(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (!write_db.ok()) return write_db.status();
  auto close_write = [&] { sqlite3_close(*write_db); };

  // The concurrent reader below depends on WAL.
  if (absl::Status s = UseDurableWal(*write_db, path); !s.ok()) {
    close_write();
    return s;
  }
  if (absl::Status s = Exec(*write_db, kSchema); !s.ok()) {
    close_write();
    return absl::InternalError(absl::StrCat("create schema in ", path, ": ", s.message()));
  }
  for (const char* alter : kAddedColumns) {
    sqlite3_exec(*write_db, alter, nullptr, nullptr, nullptr);
  }
  if (absl::Status s = Exec(*write_db, kIndexes); !s.ok()) {
    close_write();
    return absl::InternalError(absl::StrCat("create indexes in ", path, ": ", s.message()));
  }

  absl::StatusOr<sqlite3*> read_db = OpenConnection(path, SQLITE_OPEN_READONLY);
  if (!read_db.ok()) {
    close_write();
    return read_db.status();
  }
  return std::unique_ptr<FindingStore>(new FindingStore(*write_db, *read_db));
}

FindingStore::~FindingStore() {
  sqlite3_finalize(upsert_);
  sqlite3_close(read_db_);
  sqlite3_close(write_db_);
}

StoredFinding ToStored(const Finding& finding, std::string payload) {
  StoredFinding row;
  row.id = absl::AsciiStrToLower(finding.id());
  row.node = finding.node();
  row.time_ns = UnixNanos(finding.time());
  row.last_seen_ns =
      UnixNanos(finding.has_last_seen() ? finding.last_seen() : finding.time());
  row.rule_id = finding.rule_id();
  row.severity = finding.severity();
  row.owner_namespace = finding.token().owner().namespace_();
  row.actor_namespace = finding.process().pod().namespace_();
  row.owner_pod = finding.token().owner().name();
  row.actor_pod = finding.process().pod().name();
  row.count = ClampCount(finding.count());
  row.payload = std::move(payload);
  if (row.payload.empty()) finding.SerializeToString(&row.payload);
  return row;
}

absl::Status FindingStore::Upsert(const Finding& finding) {
  return Upsert(std::vector<const Finding*>{&finding});
}

absl::Status FindingStore::Upsert(const std::vector<const Finding*>& findings) {
  std::vector<StoredFinding> rows;
  rows.reserve(findings.size());
  for (const Finding* f : findings) rows.push_back(ToStored(*f));
  std::vector<const StoredFinding*> ptrs;
  ptrs.reserve(rows.size());
  for (const StoredFinding& row : rows) ptrs.push_back(&row);
  return Upsert(ptrs);
}

absl::Status FindingStore::Upsert(const std::vector<const StoredFinding*>& findings,
                                  std::vector<bool>* changed) {
  if (changed != nullptr) changed->assign(findings.size(), false);
  absl::MutexLock lock(&write_mu_);
  if (upsert_ == nullptr &&
      sqlite3_prepare_v3(write_db_, kUpsert, -1, SQLITE_PREPARE_PERSISTENT, &upsert_,
                         nullptr) != SQLITE_OK) {
    return SqliteError(write_db_, "prepare statement");
  }
  if (absl::Status s = Exec(write_db_, "BEGIN IMMEDIATE"); !s.ok()) return s;

  auto fail = [&](absl::Status status) {
    sqlite3_reset(upsert_);
    sqlite3_exec(write_db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  };
  // The strings outlive the step, so SQLite need not copy them (SQLITE_STATIC).
  auto text = [&](int column, const std::string& value) {
    sqlite3_bind_text(upsert_, column, value.data(), static_cast<int>(value.size()),
                      SQLITE_STATIC);
  };
  for (size_t i = 0; i < findings.size(); ++i) {
    const StoredFinding& f = *findings[i];
    sqlite3_stmt* s = upsert_;
    sqlite3_reset(s);
    text(1, f.id);
    text(2, f.node);
    sqlite3_bind_int64(s, 3, f.time_ns);
    sqlite3_bind_int64(s, 4, f.last_seen_ns);
    text(5, f.rule_id);
    sqlite3_bind_int(s, 6, f.severity);
    text(7, f.owner_namespace);
    text(8, f.actor_namespace);
    sqlite3_bind_int64(s, 9, f.count);
    sqlite3_bind_blob(s, 10, f.payload.data(), static_cast<int>(f.payload.size()),
                      SQLITE_STATIC);
    text(11, f.owner_pod);
    text(12, f.actor_pod);
    if (sqlite3_step(s) != SQLITE_DONE) {
      return fail(SqliteError(write_db_, "store finding"));
    }
    if (changed != nullptr) (*changed)[i] = sqlite3_changes(write_db_) > 0;
  }
  sqlite3_reset(upsert_);
  sqlite3_clear_bindings(upsert_);
  if (absl::Status s = Exec(write_db_, "COMMIT"); !s.ok()) return fail(s);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Finding>> FindingStore::List(const FindingQuery& query) {
  absl::StatusOr<FindingPage> page = ListPage(query);
  if (!page.ok()) return page.status();
  return std::move(page->findings);
}

absl::StatusOr<FindingPage> FindingStore::ListPage(const FindingQuery& query) {
  absl::StatusOr<ListStatement> list = BuildList(query);
  if (!list.ok()) return list.status();

  absl::MutexLock lock(&read_mu_);
  absl::StatusOr<Stmt> stmt = Prepare(read_db_, list->sql.c_str());
  if (!stmt.ok()) return stmt.status();
  sqlite3_stmt* st = stmt->get();
  BindAll(st, *list);
  FindingPage page;
  int64_t last_ns = 0;
  std::string last_id;
  for (;;) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return SqliteError(read_db_, "query findings");
    if (page.findings.size() == list->limit) {
      page.next_page_token = absl::StrCat(last_ns, "/", last_id);
      break;
    }
    Finding finding;
    if (!finding.ParseFromArray(sqlite3_column_blob(st, 0), sqlite3_column_bytes(st, 0))) {
      return absl::DataLossError("stored finding does not parse");
    }
    last_ns = sqlite3_column_int64(st, 1);
    last_id = reinterpret_cast<const char*>(sqlite3_column_text(st, 2));
    page.findings.push_back(std::move(finding));
  }
  return page;
}

bool MatchesQuery(const FindingQuery& query, const Finding& f) {
  const google::protobuf::Timestamp& ts = f.has_last_seen() ? f.last_seen() : f.time();
  const absl::Time last_seen = absl::FromUnixNanos(UnixNanos(ts));
  if (last_seen < query.since || last_seen >= query.until) return false;
  if (f.severity() < query.min_severity) return false;
  if (!query.rule_id.empty() && f.rule_id() != query.rule_id) return false;
  if (!query.node.empty() && f.node() != query.node) return false;
  if (!query.namespace_name.empty() && f.token().owner().namespace_() != query.namespace_name &&
      f.process().pod().namespace_() != query.namespace_name) {
    return false;
  }
  if (!query.pod.empty() && f.token().owner().name() != query.pod &&
      f.process().pod().name() != query.pod) {
    return false;
  }
  return true;
}

absl::StatusOr<Finding> FindingStore::Get(const std::string& id) {
  const std::string key = absl::AsciiStrToLower(id);
  absl::MutexLock lock(&read_mu_);
  absl::StatusOr<Stmt> stmt = Prepare(read_db_, "SELECT finding FROM findings WHERE id = ?1");
  if (!stmt.ok()) return stmt.status();
  sqlite3_bind_text(stmt->get(), 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
  absl::StatusOr<std::vector<Finding>> rows = ReadFindings(read_db_, stmt->get());
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return absl::NotFoundError(absl::StrCat("no finding with id ", id));
  return std::move(rows->front());
}

absl::StatusOr<std::string> FindingStore::JournalMode() {
  absl::MutexLock lock(&read_mu_);
  absl::StatusOr<Stmt> stmt = Prepare(read_db_, "PRAGMA journal_mode");
  if (!stmt.ok()) return stmt.status();
  if (sqlite3_step(stmt->get()) != SQLITE_ROW) return SqliteError(read_db_, "journal_mode");
  return std::string(reinterpret_cast<const char*>(sqlite3_column_text(stmt->get(), 0)));
}

absl::StatusOr<std::string> FindingStore::QueryPlan(const FindingQuery& query) {
  absl::StatusOr<ListStatement> list = BuildList(query);
  if (!list.ok()) return list.status();
  const std::string sql = absl::StrCat("EXPLAIN QUERY PLAN ", list->sql);
  absl::MutexLock lock(&read_mu_);
  absl::StatusOr<Stmt> stmt = Prepare(read_db_, sql.c_str());
  if (!stmt.ok()) return stmt.status();
  BindAll(stmt->get(), *list);
  std::vector<std::string> details;
  for (;;) {
    int rc = sqlite3_step(stmt->get());
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return SqliteError(read_db_, "explain query");
    // Columns: id, parent, unused, detail.
    details.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(stmt->get(), 3)));
  }
  return absl::StrJoin(details, "\n");
}

}  // namespace tokenwatch::collector
