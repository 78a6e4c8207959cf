#include "collector/sqlite_util.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace tokenwatch::collector {

absl::StatusOr<sqlite3*> OpenConnection(const std::string& path, int flags) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, flags | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = absl::UnavailableError(absl::StrCat(
        "open database ", path, ": ", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
    sqlite3_close(db);
    return status;
  }
  // The other store's connection (the findings' group commit holds the write lock for one
  // fsync at a time), a backup or an operator's sqlite3 shell may hold a lock briefly.
  sqlite3_busy_timeout(db, 5000);
  return db;
}

absl::Status UseDurableWal(sqlite3* db, const std::string& path) {
  for (const char* pragma : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL"}) {
    if (absl::Status s = Exec(db, pragma); !s.ok()) return s;
  }
  // An in-memory database (tests, fuzzing) has no file to write ahead of; it stays "memory".
  if (path == ":memory:") return absl::OkStatus();
  // journal_mode=WAL reports the mode it got instead of failing, so ask.
  absl::StatusOr<Stmt> stmt = Prepare(db, "PRAGMA journal_mode");
  if (!stmt.ok() || sqlite3_step(stmt->get()) != SQLITE_ROW ||
      absl::AsciiStrToLower(reinterpret_cast<const char*>(sqlite3_column_text(stmt->get(), 0))) !=
          "wal") {
    return absl::FailedPreconditionError(
        absl::StrCat("open database ", path, ": cannot enable WAL journal mode"));
  }
  return absl::OkStatus();
}

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

}  // namespace tokenwatch::collector
