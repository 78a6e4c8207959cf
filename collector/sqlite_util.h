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

// Opens a connection to the database at `path` with `flags` (SQLITE_OPEN_*; NOMUTEX is added:
// each connection is used under its owner's lock or from one thread). It waits up to 5 s for a
// lock another connection or process holds. Unavailable, naming the path, when it cannot open.
// The caller owns the connection (sqlite3_close).
absl::StatusOr<sqlite3*> OpenConnection(const std::string& path, int flags);

// Puts a read-write connection in WAL mode with synchronous=FULL: a commit survives a power
// cut (the collector acks only after it) and readers on other connections do not block the
// writer. FailedPrecondition when SQLite cannot use WAL there (a filesystem without shared
// memory), since both stores depend on it.
absl::Status UseDurableWal(sqlite3* db, const std::string& path);

// "<what>: <sqlite's message for db>" as an internal error.
absl::Status SqliteError(sqlite3* db, absl::string_view what);

absl::StatusOr<Stmt> Prepare(sqlite3* db, const char* sql);

// Runs one or more statements that return no rows.
absl::Status Exec(sqlite3* db, const char* sql);

}  // namespace tokenwatch::collector
