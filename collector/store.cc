#include "collector/store.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace tokenwatch::collector {
namespace {

using tokenwatch::v1::Finding;

struct StmtDeleter {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtDeleter>;

absl::Status SqliteError(sqlite3* db, absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", sqlite3_errmsg(db)));
}

absl::StatusOr<Stmt> Prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) != SQLITE_OK) {
    return SqliteError(db, "prepare statement");
  }
  return Stmt(stmt);
}

absl::Status Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    absl::Status status = absl::InternalError(absl::StrCat(sql, ": ", err ? err : "unknown"));
    sqlite3_free(err);
    return status;
  }
  return absl::OkStatus();
}

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

absl::StatusOr<sqlite3*> OpenConnection(const std::string& path, int flags) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, flags | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = absl::UnavailableError(absl::StrCat(
        "open database ", path, ": ", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
    sqlite3_close(db);
    return status;
  }
  // Another process (a backup, an operator's sqlite3 shell) may hold a lock briefly.
  sqlite3_busy_timeout(db, 5000);
  return db;
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
  finding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_last_seen ON findings(last_seen_ns);
CREATE INDEX IF NOT EXISTS findings_node ON findings(node, last_seen_ns);
CREATE INDEX IF NOT EXISTS findings_rule ON findings(rule_id, last_seen_ns);
CREATE INDEX IF NOT EXISTS findings_owner_ns ON findings(owner_namespace, last_seen_ns);
CREATE INDEX IF NOT EXISTS findings_actor_ns ON findings(actor_namespace, last_seen_ns);
)sql";

// The stored row is replaced only when the agent folded more events into the finding since the
// copy we hold; an identical re-send (the agent missed our ack) is a no-op.
constexpr char kUpsert[] = R"sql(
INSERT INTO findings (id, node, time_ns, last_seen_ns, rule_id, severity, owner_namespace,
                      actor_namespace, count, finding)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT(id) DO UPDATE SET
  last_seen_ns = excluded.last_seen_ns,
  severity = excluded.severity,
  count = excluded.count,
  finding = excluded.finding
WHERE excluded.count > findings.count OR excluded.last_seen_ns > findings.last_seen_ns
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

}  // namespace

absl::StatusOr<std::unique_ptr<FindingStore>> FindingStore::Open(const std::string& path) {
  absl::StatusOr<sqlite3*> write_db =
      OpenConnection(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (!write_db.ok()) return write_db.status();
  auto close_write = [&] { sqlite3_close(*write_db); };

  for (const char* pragma : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL"}) {
    if (absl::Status s = Exec(*write_db, pragma); !s.ok()) {
      close_write();
      return s;
    }
  }
  // journal_mode=WAL reports the mode it got instead of failing (e.g. on a filesystem without
  // shared memory); the concurrent reader below depends on WAL, so insist.
  {
    absl::StatusOr<Stmt> stmt = Prepare(*write_db, "PRAGMA journal_mode");
    if (!stmt.ok() || sqlite3_step(stmt->get()) != SQLITE_ROW ||
        absl::AsciiStrToLower(reinterpret_cast<const char*>(
            sqlite3_column_text(stmt->get(), 0))) != "wal") {
      close_write();
      return absl::FailedPreconditionError(
          absl::StrCat("open database ", path, ": cannot enable WAL journal mode"));
    }
  }
  if (absl::Status s = Exec(*write_db, kSchema); !s.ok()) {
    close_write();
    return absl::InternalError(absl::StrCat("create schema in ", path, ": ", s.message()));
  }

  absl::StatusOr<sqlite3*> read_db = OpenConnection(path, SQLITE_OPEN_READONLY);
  if (!read_db.ok()) {
    close_write();
    return read_db.status();
  }
  return std::unique_ptr<FindingStore>(new FindingStore(*write_db, *read_db));
}

FindingStore::~FindingStore() {
  sqlite3_close(read_db_);
  sqlite3_close(write_db_);
}

absl::Status FindingStore::Upsert(const Finding& finding) {
  return Upsert(std::vector<const Finding*>{&finding});
}

absl::Status FindingStore::Upsert(const std::vector<const Finding*>& findings) {
  absl::MutexLock lock(&write_mu_);
  absl::StatusOr<Stmt> stmt = Prepare(write_db_, kUpsert);
  if (!stmt.ok()) return stmt.status();
  if (absl::Status s = Exec(write_db_, "BEGIN IMMEDIATE"); !s.ok()) return s;

  auto fail = [&](absl::Status status) {
    sqlite3_exec(write_db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  };
  std::string payload;
  for (const Finding* finding : findings) {
    if (!finding->SerializeToString(&payload)) {
      return fail(absl::InternalError("serialize finding"));
    }
    const std::string id = absl::AsciiStrToLower(finding->id());
    const google::protobuf::Timestamp& last_seen =
        finding->has_last_seen() ? finding->last_seen() : finding->time();
    sqlite3_stmt* s = stmt->get();
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, finding->node().data(), static_cast<int>(finding->node().size()),
                      SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 3, UnixNanos(finding->time()));
    sqlite3_bind_int64(s, 4, UnixNanos(last_seen));
    sqlite3_bind_text(s, 5, finding->rule_id().data(),
                      static_cast<int>(finding->rule_id().size()), SQLITE_TRANSIENT);
    sqlite3_bind_int(s, 6, finding->severity());
    const std::string& owner_ns = finding->token().owner().namespace_();
    const std::string& actor_ns = finding->process().pod().namespace_();
    sqlite3_bind_text(s, 7, owner_ns.data(), static_cast<int>(owner_ns.size()),
                      SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 8, actor_ns.data(), static_cast<int>(actor_ns.size()),
                      SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 9, ClampCount(finding->count()));
    sqlite3_bind_blob(s, 10, payload.data(), static_cast<int>(payload.size()), SQLITE_TRANSIENT);
    if (sqlite3_step(s) != SQLITE_DONE) {
      return fail(SqliteError(write_db_, "store finding"));
    }
  }
  stmt->reset();
  if (absl::Status s = Exec(write_db_, "COMMIT"); !s.ok()) return fail(s);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Finding>> FindingStore::List(const FindingQuery& query) {
  // Unused filters compare against a wildcard so one statement serves every combination.
  constexpr char kList[] = R"sql(
SELECT finding FROM findings
WHERE last_seen_ns >= ?1
  AND severity >= ?2
  AND (?3 = '' OR rule_id = ?3)
  AND (?4 = '' OR owner_namespace = ?4 OR actor_namespace = ?4)
  AND (?5 = '' OR node = ?5)
ORDER BY last_seen_ns DESC, time_ns DESC, id
LIMIT ?6
)sql";
  uint32_t limit = query.limit == 0 ? kDefaultListLimit : std::min(query.limit, kMaxListLimit);
  int64_t since_ns = std::numeric_limits<int64_t>::min();
  if (query.since != absl::InfinitePast()) {
    since_ns = absl::ToUnixNanos(query.since);
  }

  absl::MutexLock lock(&read_mu_);
  absl::StatusOr<Stmt> stmt = Prepare(read_db_, kList);
  if (!stmt.ok()) return stmt.status();
  sqlite3_stmt* s = stmt->get();
  sqlite3_bind_int64(s, 1, since_ns);
  sqlite3_bind_int(s, 2, query.min_severity);
  sqlite3_bind_text(s, 3, query.rule_id.data(), static_cast<int>(query.rule_id.size()),
                    SQLITE_TRANSIENT);
  sqlite3_bind_text(s, 4, query.namespace_name.data(),
                    static_cast<int>(query.namespace_name.size()), SQLITE_TRANSIENT);
  sqlite3_bind_text(s, 5, query.node.data(), static_cast<int>(query.node.size()),
                    SQLITE_TRANSIENT);
  sqlite3_bind_int64(s, 6, limit);
  return ReadFindings(read_db_, s);
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

}  // namespace tokenwatch::collector
