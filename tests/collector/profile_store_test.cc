#include "collector/profile_store.h"

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/profile_policy.h"
#include "collector/store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tokenwatch::collector {
namespace {

using ::testing::ElementsAre;
using tokenwatch::v1::LearnedProfile;

const absl::Time kT0 = absl::FromUnixSeconds(1767225600);  // 2026-01-01

LearnedProfile Profile(const std::string& ns, const std::string& workload,
                       std::vector<std::string> readers, const std::string& container = "/app") {
  LearnedProfile p;
  p.set_namespace_(ns);
  p.set_workload(workload);
  p.set_container(container);
  for (const std::string& r : readers) p.add_token_readers()->set_path(r);
  profiles::SetTime(kT0, p.mutable_learning_started());
  profiles::SetTime(kT0 + absl::Hours(24), p.mutable_learning_ends());
  return p;
}

ProfileQuery Query(const std::string& ns, const std::string& glob = "",
                   const std::string& node = "", uint32_t limit = 0,
                   const std::string& token = "") {
  ProfileQuery q;
  q.namespace_name = ns;
  q.workload_glob = glob;
  q.node = node;
  q.limit = limit;
  q.page_token = token;
  return q;
}

// "node ns/workload" of each listed profile, in list order.
std::vector<std::string> Keys(const ProfilePage& page) {
  std::vector<std::string> out;
  for (const LearnedProfile& p : page.profiles) {
    out.push_back(p.node() + " " + p.namespace_() + "/" + p.workload());
  }
  return out;
}

class ProfileStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tw-profile-store-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    Reopen();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    store_.reset();
    auto store = ProfileStore::Open(dir_ + "/collector.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  ProfilePage List(const ProfileQuery& q = ProfileQuery()) {
    auto page = store_->List(q);
    EXPECT_TRUE(page.ok()) << page.status();
    return page.ok() ? *page : ProfilePage{};
  }

  std::string dir_;
  std::unique_ptr<ProfileStore> store_;
};

TEST_F(ProfileStoreTest, StampsNodeAndTimeAndKeepsTheProfile) {
  ASSERT_TRUE(store_
                  ->ReplaceNode("node-a", {Profile("payments", "api", {"/app/server"})},
                                kT0 + absl::Minutes(5))
                  .ok());
  ProfilePage page = List();
  ASSERT_EQ(page.profiles.size(), 1u);
  const LearnedProfile& p = page.profiles[0];
  EXPECT_EQ(p.node(), "node-a");
  EXPECT_EQ(profiles::TimeOf(p.updated()), kT0 + absl::Minutes(5));
  ASSERT_EQ(p.token_readers_size(), 1);
  EXPECT_EQ(p.token_readers(0).path(), "/app/server");
  EXPECT_EQ(profiles::TimeOf(p.learning_ends()), kT0 + absl::Hours(24));
  EXPECT_TRUE(page.next_page_token.empty());
}

TEST_F(ProfileStoreTest, AReuploadReplacesOnlyThatNodesCopy) {
  ASSERT_TRUE(store_
                  ->ReplaceNode(
                      "node-a",
                      {Profile("payments", "api", {"/a"}), Profile("payments", "web", {"/w"})}, kT0)
                  .ok());
  ASSERT_TRUE(store_->ReplaceNode("node-b", {Profile("payments", "api", {"/b"})}, kT0).ok());
  // node-a no longer runs web and learned more for api: its copy is what it says now.
  ASSERT_TRUE(store_->ReplaceNode("node-a", {Profile("payments", "api", {"/a", "/a2"})}, kT0).ok());
  ProfilePage page = List();
  EXPECT_THAT(Keys(page), ElementsAre("node-a payments/api", "node-b payments/api"));
  EXPECT_EQ(page.profiles[0].token_readers_size(), 2);
  // The same upload again changes nothing.
  ASSERT_TRUE(store_->ReplaceNode("node-a", {Profile("payments", "api", {"/a", "/a2"})}, kT0).ok());
  EXPECT_EQ(List().profiles.size(), 2u);
  // An empty upload: the node forgot everything (its state dir was wiped).
  ASSERT_TRUE(store_->ReplaceNode("node-b", {}, kT0).ok());
  EXPECT_THAT(Keys(List()), ElementsAre("node-a payments/api"));
}

TEST_F(ProfileStoreTest, SurvivesReopenBesideTheFindingsTable) {
  // The findings' store shares the file and opens it first in the collector.
  auto findings = FindingStore::Open(dir_ + "/collector.db");
  ASSERT_TRUE(findings.ok()) << findings.status();
  ASSERT_TRUE(store_->ReplaceNode("node-a", {Profile("payments", "api", {"/a"})}, kT0).ok());
  Reopen();
  EXPECT_THAT(Keys(List()), ElementsAre("node-a payments/api"));
}

TEST_F(ProfileStoreTest, FiltersByNamespaceWorkloadGlobAndNode) {
  ASSERT_TRUE(store_
                  ->ReplaceNode("node-a",
                                {Profile("payments", "api", {"/a"}),
                                 Profile("payments", "web-frontend", {"/w"}),
                                 Profile("shop", "web-cart", {"/c"})},
                                kT0)
                  .ok());
  ASSERT_TRUE(
      store_->ReplaceNode("node-b", {Profile("payments", "web-frontend", {"/w"})}, kT0).ok());
  EXPECT_THAT(Keys(List(Query("payments"))),
              ElementsAre("node-a payments/api", "node-a payments/web-frontend",
                          "node-b payments/web-frontend"));
  EXPECT_THAT(Keys(List(Query("", "web-*"))),
              ElementsAre("node-a payments/web-frontend", "node-b payments/web-frontend",
                          "node-a shop/web-cart"));
  EXPECT_THAT(Keys(List(Query("payments", "web-*", "node-b"))),
              ElementsAre("node-b payments/web-frontend"));
  // A namespace is exact, not a prefix or a glob.
  EXPECT_TRUE(List(Query("pay*")).profiles.empty());
}

TEST_F(ProfileStoreTest, PagesCoverEveryMatchOnce) {
  std::vector<LearnedProfile> many;
  for (int i = 0; i < 25; ++i) {
    many.push_back(Profile("ns", "web-" + std::to_string(100 + i), {"/w"}));
    many.push_back(Profile("ns", "other-" + std::to_string(100 + i), {"/o"}));
  }
  ASSERT_TRUE(store_->ReplaceNode("node-a", many, kT0).ok());
  ASSERT_TRUE(store_->ReplaceNode("node-b", many, kT0).ok());
  ProfileQuery q = Query("", "web-*", "", 7);
  std::vector<std::string> all;
  int pages = 0;
  do {
    ProfilePage page = List(q);
    ASSERT_LE(page.profiles.size(), 7u);
    for (const std::string& k : Keys(page)) all.push_back(k);
    q.page_token = page.next_page_token;
    ASSERT_LT(++pages, 20);
  } while (!q.page_token.empty());
  EXPECT_EQ(all.size(), 50u);  // 25 workloads on 2 nodes
  EXPECT_EQ(pages, 8);         // 7 full pages and one of 1: no empty last page
  EXPECT_EQ(std::set<std::string>(all.begin(), all.end()).size(), 50u);
  EXPECT_TRUE(std::is_sorted(all.begin(), all.end(), [](const auto& a, const auto& b) {
    return a.substr(a.find(' ')) + a.substr(0, a.find(' ')) <
           b.substr(b.find(' ')) + b.substr(0, b.find(' '));
  }));
}

TEST_F(ProfileStoreTest, RefusesAPageTokenItDidNotMake) {
  for (const char* token : {"not base64!", "aGVsbG8"}) {
    auto page = store_->List(Query("", "", "", 0, token));
    EXPECT_EQ(page.status().code(), absl::StatusCode::kInvalidArgument) << token;
  }
}

}  // namespace
}  // namespace tokenwatch::collector
