#include "collector/store.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/collector/test_findings.h"

namespace tokenwatch::collector {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
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

TEST(FindingStoreOpen, FailsClearlyOnUnwritablePath) {
  auto store = FindingStore::Open("/nonexistent-dir/sub/collector.db");
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(std::string(store.status().message()),
              ::testing::HasSubstr("/nonexistent-dir/sub/collector.db"));
}

}  // namespace
}  // namespace tokenwatch::collector
