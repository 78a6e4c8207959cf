#include "collector/profile_store.h"

#include <fnmatch.h>

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "collector/sqlite_util.h"
#include "common/profile_policy.h"

namespace tokenwatch::collector {
namespace {

using tokenwatch::v1::LearnedProfile;

void BindText(sqlite3_stmt* stmt, int index, const std::string& text) {
  sqlite3_bind_text(stmt, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

std::string ColumnText(sqlite3_stmt* stmt, int column) {
  const unsigned char* text = sqlite3_column_text(stmt, column);
  return text == nullptr ? std::string()
                         : std::string(reinterpret_cast<const char*>(text),
                                       static_cast<size_t>(sqlite3_column_bytes(stmt, column)));
}

// WITHOUT ROWID: the key is what every query walks, in its order.
constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS profiles (
  namespace TEXT NOT NULL,
  workload TEXT NOT NULL,
  container TEXT NOT NULL,
  node TEXT NOT NULL,
  updated_ns INTEGER NOT NULL,
  profile BLOB NOT NULL,
  PRIMARY KEY (namespace, workload, container, node)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS profiles_by_node ON profiles(node);
)sql";

constexpr char kInsert[] = R"sql(
INSERT INTO profiles (namespace, workload, container, node, updated_ns, profile)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
)sql";

// Keyset paging: rows strictly after the last key of the previous page, in key order.
constexpr char kList[] = R"sql(
SELECT namespace, workload, container, node, profile FROM profiles
WHERE (?1 = '' OR namespace = ?1) AND (?2 = '' OR node = ?2)
  AND (namespace, workload, container, node) > (?3, ?4, ?5, ?6)
ORDER BY namespace, workload, container, node
)sql";

// A page token is the last key of a page; names never contain control characters
// (ValidateProfile), so a unit separator joins them unambiguously.
constexpr char kKeySeparator = '\x1f';

struct Key {
  std::string namespace_name, workload, container, node;
};

std::string EncodeToken(const Key& key) {
  return absl::WebSafeBase64Escape(absl::StrCat(
      key.namespace_name, std::string(1, kKeySeparator), key.workload,
      std::string(1, kKeySeparator), key.container, std::string(1, kKeySeparator), key.node));
}

absl::StatusOr<Key> DecodeToken(const std::string& token) {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(token, &raw)) {
    return absl::InvalidArgumentError("page_token: not a token this collector made");
  }
  std::vector<std::string> parts = absl::StrSplit(raw, kKeySeparator);
  if (parts.size() != 4) {
    return absl::InvalidArgumentError("page_token: not a token this collector made");
  }
  return Key{parts[0], parts[1], parts[2], parts[3]};
}

}  // namespace

absl::StatusOr<std::unique_ptr<ProfileStore>> ProfileStore::Open(const std::string& path) {
  absl::StatusOr<sqlite3*> db = OpenConnection(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (!db.ok()) return db.status();
  // The collector tells an agent its profiles are stored only after the commit; they must
  // survive a power cut like the findings do.
  if (absl::Status s = UseDurableWal(*db, path); !s.ok()) {
    sqlite3_close(*db);
    return s;
  }
  if (absl::Status s = Exec(*db, kSchema); !s.ok()) {
    sqlite3_close(*db);
    return absl::InternalError(absl::StrCat("profiles table in ", path, ": ", s.message()));
  }
  return std::unique_ptr<ProfileStore>(new ProfileStore(*db));
}

ProfileStore::~ProfileStore() { sqlite3_close(db_); }

absl::Status ProfileStore::ReplaceNode(const std::string& node,
                                       const std::vector<LearnedProfile>& profiles,
                                       absl::Time now) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Stmt> remove = Prepare(db_, "DELETE FROM profiles WHERE node = ?1");
  if (!remove.ok()) return remove.status();
  absl::StatusOr<Stmt> insert = Prepare(db_, kInsert);
  if (!insert.ok()) return insert.status();
  if (absl::Status s = Exec(db_, "BEGIN IMMEDIATE"); !s.ok()) return s;
  auto fail = [&](absl::Status s) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return s;
  };
  BindText(remove->get(), 1, node);
  if (sqlite3_step(remove->get()) != SQLITE_DONE) {
    return fail(SqliteError(db_, "delete profiles"));
  }
  for (const LearnedProfile& in : profiles) {
    LearnedProfile p = in;
    p.set_node(node);
    profiles::SetTime(now, p.mutable_updated());
    std::string blob;
    if (!p.SerializeToString(&blob)) return fail(absl::InternalError("serialize profile"));
    sqlite3_stmt* stmt = insert->get();
    sqlite3_reset(stmt);
    BindText(stmt, 1, p.namespace_());
    BindText(stmt, 2, p.workload());
    BindText(stmt, 3, p.container());
    BindText(stmt, 4, node);
    sqlite3_bind_int64(stmt, 5, absl::ToUnixNanos(now));
    sqlite3_bind_blob(stmt, 6, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
    if (sqlite3_step(stmt) != SQLITE_DONE) return fail(SqliteError(db_, "insert profile"));
  }
  if (absl::Status s = Exec(db_, "COMMIT"); !s.ok()) return fail(s);
  return absl::OkStatus();
}

absl::StatusOr<ProfilePage> ProfileStore::List(const ProfileQuery& query) {
  Key after;
  if (!query.page_token.empty()) {
    absl::StatusOr<Key> key = DecodeToken(query.page_token);
    if (!key.ok()) return key.status();
    after = *std::move(key);
  }
  const uint32_t limit =
      query.limit == 0 ? kDefaultListLimit : std::min(query.limit, kMaxListLimit);
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Stmt> stmt = Prepare(db_, kList);
  if (!stmt.ok()) return stmt.status();
  sqlite3_stmt* s = stmt->get();
  BindText(s, 1, query.namespace_name);
  BindText(s, 2, query.node);
  BindText(s, 3, after.namespace_name);
  BindText(s, 4, after.workload);
  BindText(s, 5, after.container);
  BindText(s, 6, after.node);
  ProfilePage page;
  Key last;
  for (;;) {
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return SqliteError(db_, "query profiles");
    const std::string workload = ColumnText(s, 1);
    // The glob is the policy's (fnmatch without flags), which SQL's GLOB is not.
    if (!query.workload_glob.empty() &&
        fnmatch(query.workload_glob.c_str(), workload.c_str(), 0) != 0) {
      continue;
    }
    if (page.profiles.size() == limit) {
      // Another match exists: the page is full and not the last.
      page.next_page_token = EncodeToken(last);
      break;
    }
    LearnedProfile& p = page.profiles.emplace_back();
    if (!p.ParseFromArray(sqlite3_column_blob(s, 4), sqlite3_column_bytes(s, 4))) {
      return absl::DataLossError("stored profile does not parse");
    }
    last = Key{ColumnText(s, 0), workload, ColumnText(s, 2), ColumnText(s, 3)};
  }
  return page;
}

}  // namespace tokenwatch::collector
