#include "collector/store.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/collector/test_findings.h"

namespace tokenwatch::collector {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using testing::TestFinding;
using testing::TestUuid;
using tokenwatch::v1::Finding;

class FindingStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tw-store-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto store = FindingStore::Open(dir_ + "/collector.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::vector<std::string> ListIds(const FindingQuery& query) {
    auto findings = store_->List(query);
    EXPECT_TRUE(findings.ok()) << findings.status();
    std::vector<std::string> ids;
    if (findings.ok()) {
      for (const Finding& f : *findings) ids.push_back(f.id());
    }
    return ids;
  }

  std::string dir_;
  std::unique_ptr<FindingStore> store_;
};

TEST_F(FindingStoreTest, UsesWalJournal) {
  auto mode = store_->JournalMode();
  ASSERT_TRUE(mode.ok()) << mode.status();
  EXPECT_EQ(*mode, "wal");
}

TEST_F(FindingStoreTest, StoredFindingRoundTrips) {
  Finding f = TestFinding(1);
  ASSERT_TRUE(store_->Upsert(f).ok());
  auto got = store_->Get(f.id());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->SerializeAsString(), f.SerializeAsString());
}

TEST_F(FindingStoreTest, GetIsCaseInsensitiveAndNotFoundWhenAbsent) {
  Finding f = TestFinding(1);
  ASSERT_TRUE(store_->Upsert(f).ok());
  std::string upper = f.id();
  for (char& c : upper) c = static_cast<char>(toupper(c));
  EXPECT_TRUE(store_->Get(upper).ok());
  EXPECT_EQ(store_->Get(TestUuid(2)).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(FindingStoreTest, ResendingTheSameFindingChangesNothing) {
  Finding f = TestFinding(1);
  ASSERT_TRUE(store_->Upsert(f).ok());
  // A re-send that is not a grown fold must not overwrite what we have, even if it differs.
  Finding resend = f;
  resend.set_summary("something else");
  ASSERT_TRUE(store_->Upsert(resend).ok());
  ASSERT_TRUE(store_->Upsert(f).ok());
  EXPECT_THAT(ListIds({}), ElementsAre(f.id()));
  EXPECT_EQ(store_->Get(f.id())->summary(), f.summary());
}

TEST_F(FindingStoreTest, HigherCountUpdatesCountAndPayload) {
  Finding f = TestFinding(1);
  ASSERT_TRUE(store_->Upsert(f).ok());
  Finding grown = f;
  grown.set_count(7);
  grown.set_summary("folded 7 events");
  ASSERT_TRUE(store_->Upsert(grown).ok());
  auto got = store_->Get(f.id());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->count(), 7u);
  EXPECT_EQ(got->summary(), "folded 7 events");
  // An older copy arriving late does not roll it back.
  ASSERT_TRUE(store_->Upsert(f).ok());
  EXPECT_EQ(store_->Get(f.id())->count(), 7u);
}

TEST_F(FindingStoreTest, ARaisedSeverityWithTheSameCountUpdates) {
  // The agent re-sends a read's finding with a higher severity once its
  // token is used (TW010): same id, same count.
  Finding f = TestFinding(1);
  f.set_severity(tokenwatch::v1::SEVERITY_MEDIUM);
  ASSERT_TRUE(store_->Upsert(f).ok());
  Finding raised = f;
  raised.set_severity(tokenwatch::v1::SEVERITY_CRITICAL);
  raised.add_severity_reasons("the token was then used against the API server");
  ASSERT_TRUE(store_->Upsert(raised).ok());
  auto got = store_->Get(f.id());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->severity(), tokenwatch::v1::SEVERITY_CRITICAL);
  EXPECT_EQ(got->severity_reasons_size(), 1);
  // The medium copy arriving late does not lower it again.
  ASSERT_TRUE(store_->Upsert(f).ok());
  EXPECT_EQ(store_->Get(f.id())->severity(), tokenwatch::v1::SEVERITY_CRITICAL);
}

TEST_F(FindingStoreTest, LaterLastSeenUpdates) {
  absl::Time t0 = absl::Now() - absl::Hours(2);
  Finding f = TestFinding(1, t0);
  ASSERT_TRUE(store_->Upsert(f).ok());
  Finding later = f;
  testing::SetTime(later.mutable_last_seen(), t0 + absl::Hours(1));
  ASSERT_TRUE(store_->Upsert(later).ok());
  // The since filter works on last_seen, so the update must be visible to it.
  FindingQuery q;
  q.since = t0 + absl::Minutes(30);
  EXPECT_THAT(ListIds(q), ElementsAre(f.id()));
}

TEST_F(FindingStoreTest, ListsNewestFirstWithLimit) {
  absl::Time now = absl::Now();
  for (uint32_t i = 1; i <= 5; ++i) {
    ASSERT_TRUE(store_->Upsert(TestFinding(i, now - absl::Minutes(10 - i))).ok());
  }
  FindingQuery q;
  q.limit = 3;
  EXPECT_THAT(ListIds(q), ElementsAre(TestUuid(5), TestUuid(4), TestUuid(3)));
  EXPECT_EQ(ListIds({}).size(), 5u);
}

TEST_F(FindingStoreTest, DefaultLimitIsOneHundred) {
  std::vector<Finding> findings;
  for (uint32_t i = 1; i <= 150; ++i) findings.push_back(TestFinding(i));
  std::vector<const Finding*> batch;
  for (const Finding& f : findings) batch.push_back(&f);
  ASSERT_TRUE(store_->Upsert(batch).ok());
  EXPECT_EQ(ListIds({}).size(), 100u);
  FindingQuery q;
  q.limit = 1000000;  // capped, not an error
  EXPECT_EQ(ListIds(q).size(), 150u);
}

TEST_F(FindingStoreTest, FiltersBySinceSeverityRuleNamespaceAndNode) {
  absl::Time now = absl::Now();
  Finding old = TestFinding(1, now - absl::Hours(3));
  Finding low = TestFinding(2, now - absl::Minutes(1));
  low.set_severity(tokenwatch::v1::SEVERITY_LOW);
  low.set_rule_id("TW001");
  low.mutable_process()->mutable_pod()->set_namespace_("payments");
  Finding other_node = TestFinding(3, now - absl::Minutes(2));
  other_node.set_node("node-b");
  other_node.mutable_token()->mutable_owner()->set_namespace_("billing");
  for (const Finding* f : {&old, &low, &other_node}) ASSERT_TRUE(store_->Upsert(*f).ok());

  FindingQuery since;
  since.since = now - absl::Hours(1);
  EXPECT_THAT(ListIds(since), ElementsAre(low.id(), other_node.id()));

  FindingQuery severe;
  severe.min_severity = tokenwatch::v1::SEVERITY_HIGH;
  EXPECT_THAT(ListIds(severe), ElementsAre(other_node.id(), old.id()));

  FindingQuery rule;
  rule.rule_id = "TW001";
  EXPECT_THAT(ListIds(rule), ElementsAre(low.id()));

  // Matches the token owner's namespace or the actor pod's namespace.
  FindingQuery owner_ns;
  owner_ns.namespace_name = "billing";
  EXPECT_THAT(ListIds(owner_ns), ElementsAre(other_node.id()));
  FindingQuery actor_ns;
  actor_ns.namespace_name = "attacker";
  EXPECT_THAT(ListIds(actor_ns), ElementsAre(other_node.id(), old.id()));
  FindingQuery payments;
  payments.namespace_name = "payments";
  EXPECT_THAT(ListIds(payments), ElementsAre(low.id(), old.id()));

  FindingQuery node;
  node.node = "node-b";
  EXPECT_THAT(ListIds(node), ElementsAre(other_node.id()));
  node.node = "node-z";
  EXPECT_THAT(ListIds(node), IsEmpty());
}

// A finding whose token belongs to owner_ns/owner_pod, read from actor_ns/actor_pod.
Finding Between(uint32_t n, absl::Time t, const std::string& owner_ns,
                const std::string& owner_pod, const std::string& actor_ns,
                const std::string& actor_pod) {
  Finding f = TestFinding(n, t);
  f.mutable_token()->mutable_owner()->set_namespace_(owner_ns);
  f.mutable_token()->mutable_owner()->set_name(owner_pod);
  f.mutable_process()->mutable_pod()->set_namespace_(actor_ns);
  f.mutable_process()->mutable_pod()->set_name(actor_pod);
  return f;
}

TEST_F(FindingStoreTest, NamespaceAndPodFiltersMatchEitherSideOnceNewestFirst) {
  // The store answers these filters as a merge of two index walks (owner side, actor side);
  // the merge must keep the list order, list a finding matching on both sides once, and agree
  // with MatchesQuery, which WatchFindings applies to live findings.
  const absl::Time now = absl::Now();
  std::vector<Finding> all = {
      Between(1, now - absl::Minutes(9), "shop", "web-0", "attacker", "shell-0"),
      Between(2, now - absl::Minutes(8), "payments", "api-0", "shop", "web-1"),
      Between(3, now - absl::Minutes(7), "shop", "web-0", "shop", "web-0"),
      Between(4, now - absl::Minutes(6), "payments", "api-0", "attacker", "shell-0"),
      Between(5, now - absl::Minutes(5), "payments", "web-0", "attacker", "shell-0"),
      Between(6, now - absl::Minutes(4), "shop", "api-0", "attacker", "web-0"),
      Between(7, now - absl::Minutes(3), "attacker", "shell-0", "shop", "web-1"),
  };
  all[6].set_severity(tokenwatch::v1::SEVERITY_LOW);
  for (const Finding& f : all) ASSERT_TRUE(store_->Upsert(f).ok());

  FindingQuery shop;
  shop.namespace_name = "shop";
  EXPECT_THAT(ListIds(shop), ElementsAre(TestUuid(7), TestUuid(6), TestUuid(3), TestUuid(2),
                                         TestUuid(1)));
  FindingQuery web0;
  web0.pod = "web-0";
  EXPECT_THAT(ListIds(web0), ElementsAre(TestUuid(6), TestUuid(5), TestUuid(3), TestUuid(1)));

  std::vector<FindingQuery> queries = {shop, web0};
  FindingQuery both = web0;
  both.namespace_name = "shop";
  queries.push_back(both);
  FindingQuery severe_shop = shop;
  severe_shop.min_severity = tokenwatch::v1::SEVERITY_HIGH;
  queries.push_back(severe_shop);
  FindingQuery attacker_pod;
  attacker_pod.pod = "shell-0";
  queries.push_back(attacker_pod);
  FindingQuery none;
  none.namespace_name = "nowhere";
  queries.push_back(none);
  for (const FindingQuery& q : queries) {
    SCOPED_TRACE(absl::StrCat("namespace '", q.namespace_name, "' pod '", q.pod, "'"));
    std::vector<std::string> want;
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      if (MatchesQuery(q, *it)) want.push_back(it->id());
    }
    EXPECT_EQ(ListIds(q), want);

    // Page by page, one at a time, the pages join into the same list.
    FindingQuery paged = q;
    paged.limit = 1;
    std::vector<std::string> joined;
    for (int i = 0; i < 10; ++i) {
      auto page = store_->ListPage(paged);
      ASSERT_TRUE(page.ok()) << page.status();
      for (const Finding& f : page->findings) joined.push_back(f.id());
      if (page->next_page_token.empty()) break;
      paged.page_token = page->next_page_token;
    }
    EXPECT_EQ(joined, want);
  }
}

TEST_F(FindingStoreTest, EveryFilterWalksAnIndexInListOrder) {
  // Without an index a filter that matches little walks every stored finding (seconds among a
  // million); without the list order in the index SQLite sorts every match. Either shows in
  // the plan: a bare "SCAN findings" or a temporary b-tree.
  FindingQuery all;
  FindingQuery rule;
  rule.rule_id = "TW010";
  FindingQuery node;
  node.node = "node-7";
  FindingQuery ns;
  ns.namespace_name = "ns-7";
  FindingQuery ns_high = ns;
  ns_high.min_severity = tokenwatch::v1::SEVERITY_HIGH;
  FindingQuery pod;
  pod.pod = "api-7";
  FindingQuery pod_ns = pod;
  pod_ns.namespace_name = "ns-7";
  // A later page as a client asks for it: with the token of the page before.
  for (uint32_t i = 0; i < 3; ++i) {
    Finding f = TestFinding(i, absl::Now() - absl::Minutes(i));
    f.mutable_token()->mutable_owner()->set_namespace_("ns-7");
    ASSERT_TRUE(store_->Upsert(f).ok());
  }
  FindingQuery paged_ns = ns;
  paged_ns.limit = 1;
  auto first_page = store_->ListPage(paged_ns);
  ASSERT_TRUE(first_page.ok()) << first_page.status();
  ASSERT_FALSE(first_page->next_page_token.empty());
  paged_ns.page_token = first_page->next_page_token;
  // The plan is of the statement ListPage runs, so it refuses a token ListPage refuses.
  FindingQuery bad_token = ns;
  bad_token.page_token = "not-a-token";
  EXPECT_EQ(store_->ListPage(bad_token).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->QueryPlan(bad_token).status().code(), absl::StatusCode::kInvalidArgument);
  struct Case {
    const char* name;
    FindingQuery query;
    std::vector<std::string> indexes;
  };
  const std::vector<Case> cases = {
      {"unfiltered", all, {"findings_recent"}},
      {"rule", rule, {"findings_by_rule"}},
      {"node", node, {"findings_by_node"}},
      {"namespace", ns, {"findings_by_owner_ns", "findings_by_actor_ns"}},
      {"namespace and severity", ns_high, {"findings_by_owner_ns", "findings_by_actor_ns"}},
      {"namespace, later page", paged_ns, {"findings_by_owner_ns", "findings_by_actor_ns"}},
      {"pod", pod, {"findings_by_owner_pod", "findings_by_actor_pod"}},
      {"pod and namespace", pod_ns, {"findings_by_owner_pod", "findings_by_actor_pod"}},
  };
  for (const Case& c : cases) {
    auto plan = store_->QueryPlan(c.query);
    ASSERT_TRUE(plan.ok()) << plan.status();
    SCOPED_TRACE(absl::StrCat(c.name, ":\n", *plan));
    for (absl::string_view line : absl::StrSplit(*plan, '\n')) {
      if (absl::StrContains(line, "findings")) {
        EXPECT_TRUE(absl::StrContains(line, "USING INDEX") ||
                    absl::StrContains(line, "USING COVERING INDEX"));
      }
    }
    EXPECT_THAT(*plan, Not(HasSubstr("TEMP B-TREE")));
    for (const std::string& index : c.indexes) {
      EXPECT_THAT(*plan, HasSubstr(absl::StrCat("USING INDEX ", index, " ")));
    }
  }
}

TEST_F(FindingStoreTest, SurvivesReopen) {
  ASSERT_TRUE(store_->Upsert(TestFinding(1)).ok());
  store_.reset();
  auto reopened = FindingStore::Open(dir_ + "/collector.db");
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_TRUE((*reopened)->Get(TestUuid(1)).ok());
}

TEST_F(FindingStoreTest, ConcurrentWritersAndReaders) {
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < 4; ++t) {
    threads.emplace_back([this, t] {
      for (uint32_t i = 0; i < 25; ++i) {
        EXPECT_TRUE(store_->Upsert(TestFinding(t * 100 + i)).ok());
        EXPECT_TRUE(store_->List({}).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  FindingQuery q;
  q.limit = 1000;
  EXPECT_EQ(ListIds(q).size(), 100u);
}

TEST(FindingStoreOpen, MigratesADatabaseOfTheFirstSchema) {
  // A collector upgraded in place opens the database its first release made: no pod columns,
  // the old indexes. It must open, keep the rows, and gain every index the filters rely on.
  char tmpl[] = "/tmp/tw-store-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string path = dir + "/collector.db";
  const Finding old_finding = TestFinding(1);
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    const std::string payload = old_finding.SerializeAsString();
    const std::string sql = absl::StrCat(R"sql(
CREATE TABLE findings (
  id TEXT PRIMARY KEY NOT NULL, node TEXT NOT NULL, time_ns INTEGER NOT NULL,
  last_seen_ns INTEGER NOT NULL, rule_id TEXT NOT NULL, severity INTEGER NOT NULL,
  owner_namespace TEXT NOT NULL, actor_namespace TEXT NOT NULL, count INTEGER NOT NULL,
  finding BLOB NOT NULL);
CREATE INDEX findings_last_seen ON findings(last_seen_ns);
CREATE INDEX findings_node ON findings(node, last_seen_ns);
CREATE INDEX findings_rule ON findings(rule_id, last_seen_ns);
CREATE INDEX findings_owner_ns ON findings(owner_namespace, last_seen_ns);
CREATE INDEX findings_actor_ns ON findings(actor_namespace, last_seen_ns);
INSERT INTO findings VALUES (')sql",
                                         old_finding.id(),
                                         "', 'node-a', 1, 1, 'TW002', 4, 'payments', "
                                         "'attacker', 1, x'",
                                         absl::BytesToHexString(payload), "');");
    char* error = nullptr;
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error), SQLITE_OK) << error;
    sqlite3_close(db);
  }
  {
    auto store = FindingStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    FindingQuery q;
    q.namespace_name = "attacker";
    auto listed = (*store)->List(q);
    ASSERT_TRUE(listed.ok()) << listed.status();
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_EQ(listed->front().id(), old_finding.id());
    // New findings carry the pod columns the first schema lacked.
    Finding f = TestFinding(2);
    f.mutable_process()->mutable_pod()->set_name("shell-9");
    ASSERT_TRUE((*store)->Upsert(f).ok());
    q = {};
    q.pod = "shell-9";
    auto by_pod = (*store)->List(q);
    ASSERT_TRUE(by_pod.ok()) << by_pod.status();
    ASSERT_EQ(by_pod->size(), 1u);
    EXPECT_EQ(by_pod->front().id(), f.id());
    auto plan = (*store)->QueryPlan(q);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_THAT(*plan, HasSubstr("findings_by_actor_pod"));
  }
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db,
                                 "SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                 "tbl_name = 'findings' AND sql IS NOT NULL ORDER BY name",
                                 -1, &stmt, nullptr),
              SQLITE_OK);
    std::vector<std::string> indexes;
    while (sqlite3_step(stmt) == SQLITE_ROW) {
      indexes.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)));
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    EXPECT_THAT(indexes, ElementsAre("findings_by_actor_ns", "findings_by_actor_pod",
                                     "findings_by_node", "findings_by_owner_ns",
                                     "findings_by_owner_pod", "findings_by_rule",
                                     "findings_recent"));
  }
  std::filesystem::remove_all(dir);
}

TEST(FindingStoreOpen, FailsClearlyOnUnwritablePath) {
  auto store = FindingStore::Open("/nonexistent-dir/sub/collector.db");
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(std::string(store.status().message()),
              ::testing::HasSubstr("/nonexistent-dir/sub/collector.db"));
}

}  // namespace
}  // namespace tokenwatch::collector
