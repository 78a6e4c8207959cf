#include "collector/sqlite_util.h"

#include "absl/strings/str_cat.h"

namespace tokenwatch::collector {

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
