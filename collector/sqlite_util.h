#pragma once

#include <sqlite3.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tokenwatch::collector {

// The few SQLite calls both stores (findings, profiles) wrap the same way:
// statements owned by unique_ptr, errors as absl::Status naming what failed.

struct StmtDeleter {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtDeleter>;

// "<what>: <sqlite's message for db>" as an internal error.
absl::Status SqliteError(sqlite3* db, absl::string_view what);

absl::StatusOr<Stmt> Prepare(sqlite3* db, const char* sql);

// Runs one or more statements that return no rows.
absl::Status Exec(sqlite3* db, const char* sql);

}  // namespace tokenwatch::collector
