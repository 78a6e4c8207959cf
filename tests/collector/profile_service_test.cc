#include "collector/profile_service.h"

#include <grpcpp/grpcpp.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/profile_policy.h"
#include "collector/service.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tokenwatch/v1/collector.grpc.pb.h"

namespace tokenwatch::collector {
namespace {

using ::testing::HasSubstr;
using tokenwatch::v1::LearnedProfile;
using tokenwatch::v1::ListProfilesRequest;
using tokenwatch::v1::ListProfilesResponse;
using tokenwatch::v1::UploadProfilesRequest;
using tokenwatch::v1::UploadProfilesResponse;

const absl::Time kNow = absl::FromUnixSeconds(1767225600);  // 2026-01-01

LearnedProfile Profile(const std::string& ns, const std::string& workload,
                       std::vector<std::string> readers) {
  LearnedProfile p;
  p.set_namespace_(ns);
  p.set_workload(workload);
  p.set_container("/app/server");
  p.set_service_account("api");
  for (const std::string& r : readers) p.add_token_readers()->set_path(r);
  profiles::SetTime(kNow - absl::Hours(1), p.mutable_learning_started());
  profiles::SetTime(kNow + absl::Hours(23), p.mutable_learning_ends());
  return p;
}

UploadProfilesRequest Upload(const std::string& node, std::vector<LearnedProfile> profiles) {
  UploadProfilesRequest r;
  r.set_node(node);
  r.set_agent_id("agent-1");
  for (LearnedProfile& p : profiles) *r.add_profiles() = std::move(p);
  return r;
}

TEST(ValidateUploadProfilesRequest, AcceptsAnAgentsUpload) {
  EXPECT_TRUE(ValidateUploadProfilesRequest(
                  Upload("node-a", {Profile("payments", "api", {"/app/server", "cat"})}), kNow)
                  .ok());
  // No profiles: the node has learned nothing (yet), which replaces what it had.
  EXPECT_TRUE(ValidateUploadProfilesRequest(Upload("node-a", {}), kNow).ok());
}

// Each malformed upload is refused whole, with the field named.
TEST(ValidateUploadProfilesRequest, RefusesEachMalformedUpload) {
  const std::string long_name(profiles::kMaxNameBytes + 1, 'a');
  const std::string long_path = "/" + std::string(profiles::kMaxPathBytes, 'p');
  struct Case {
    std::string name;
    std::function<void(UploadProfilesRequest*)> spoil;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"no node", [](auto* r) { r->clear_node(); }, "node: empty"},
      {"long node", [&](auto* r) { r->set_node(long_name); }, "node: longer than 253 bytes"},
      {"node with newline", [](auto* r) { r->set_node("a\nb"); }, "node: contains a control"},
      {"no namespace", [](auto* r) { r->mutable_profiles(0)->clear_namespace_(); },
       "profiles[0].namespace: empty"},
      {"no workload", [](auto* r) { r->mutable_profiles(0)->clear_workload(); },
       "profiles[0].workload: empty"},
      {"long service account",
       [&](auto* r) { r->mutable_profiles(0)->set_service_account(long_name); },
       "profiles[0].service_account: longer than"},
      {"long container", [&](auto* r) { r->mutable_profiles(0)->set_container(long_path); },
       "profiles[0].container: longer than 4096"},
      {"empty reader", [](auto* r) { r->mutable_profiles(0)->add_token_readers(); },
       "profiles[0].token_readers[1].path: empty"},
      {"reader with escape",
       [](auto* r) { r->mutable_profiles(0)->add_token_readers()->set_path("/x\x1b[2J"); },
       "profiles[0].token_readers[1].path: contains a control character"},
      {"long client",
       [&](auto* r) { r->mutable_profiles(0)->add_apiserver_clients()->set_path(long_path); },
       "profiles[0].apiserver_clients[0].path: longer than"},
      {"too many readers",
       [](auto* r) {
         for (int i = 0; i < profiles::kMaxExecutablesPerList; ++i) {
           r->mutable_profiles(0)->add_token_readers()->set_path("/r");
         }
       },
       "profiles[0].token_readers: more than 1024 entries"},
      {"no start", [](auto* r) { r->mutable_profiles(0)->clear_learning_started(); },
       "profiles[0].learning_started: not set"},
      {"no end", [](auto* r) { r->mutable_profiles(0)->clear_learning_ends(); },
       "profiles[0].learning_ends: not set"},
      {"bad nanos", [](auto* r) { r->mutable_profiles(0)->mutable_learning_ends()->set_nanos(-1); },
       "profiles[0].learning_ends: nanos out of range"},
      {"start in 1970",
       [](auto* r) { r->mutable_profiles(0)->mutable_learning_started()->set_seconds(5); },
       "profiles[0].learning_started: before the year 2000"},
      {"start next week",
       [](auto* r) {
         profiles::SetTime(kNow + absl::Hours(24 * 7),
                           r->mutable_profiles(0)->mutable_learning_started());
       },
       "profiles[0].learning_started: more than 24h in the future"},
      {"end before start",
       [](auto* r) {
         profiles::SetTime(kNow - absl::Hours(2), r->mutable_profiles(0)->mutable_learning_ends());
       },
       "profiles[0].learning_ends: before learning_started"},
      {"another node's profile", [](auto* r) { r->mutable_profiles(0)->set_node("node-b"); },
       "profiles[0].node: 'node-b' is not the uploading node"},
      {"duplicate workload",
       [](auto* r) { *r->add_profiles() = Profile("payments", "api", {"/other"}); },
       "profiles[1]: a second profile for payments/api"},
      {"too many profiles",
       [](auto* r) {
         for (int i = 0; i < profiles::kMaxProfilesPerUpload; ++i) {
           *r->add_profiles() = Profile("ns", absl::StrCat("w", i), {});
         }
       },
       "profiles: more than 10000 entries"},
  };
  for (const Case& c : cases) {
    UploadProfilesRequest r = Upload("node-a", {Profile("payments", "api", {"/app/server"})});
    c.spoil(&r);
    absl::Status s = ValidateUploadProfilesRequest(r, kNow);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message)) << c.name;
  }
  // The profile may name its own node.
  UploadProfilesRequest own = Upload("node-a", {Profile("payments", "api", {})});
  own.mutable_profiles(0)->set_node("node-a");
  EXPECT_TRUE(ValidateUploadProfilesRequest(own, kNow).ok());
}

TEST(ProfileQueryFromRequest, BoundsTheFilters) {
  ListProfilesRequest r;
  r.set_namespace_("payments");
  r.set_workload("web-*");
  r.set_limit(50);
  auto q = ProfileQueryFromRequest(r);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->namespace_name, "payments");
  EXPECT_EQ(q->workload_glob, "web-*");
  EXPECT_EQ(q->limit, 50u);
  // Too large a limit is capped (by the store, as for ListFindings), not refused.
  r.set_limit(ProfileStore::kMaxListLimit + 1);
  EXPECT_TRUE(ProfileQueryFromRequest(r).ok());
  // A page token longer than any the store makes is refused before it is decoded.
  r.set_page_token(std::string(ProfileStore::kMaxPageTokenBytes + 1, 'A'));
  EXPECT_THAT(std::string(ProfileQueryFromRequest(r).status().message()),
              HasSubstr("page_token"));
  r.clear_page_token();
  r.set_limit(0);
  r.set_workload(std::string(300, '*'));
  EXPECT_THAT(std::string(ProfileQueryFromRequest(r).status().message()),
              HasSubstr("workload: longer than"));
  r.set_workload("a\tb");
  EXPECT_EQ(ProfileQueryFromRequest(r).status().code(), absl::StatusCode::kInvalidArgument);
}

// The real service on 127.0.0.1:0 over a temporary database, reached through gRPC.
class ProfileRpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tw-profile-rpc-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto findings = FindingStore::Open(dir_ + "/collector.db");
    ASSERT_TRUE(findings.ok()) << findings.status();
    findings_ = *std::move(findings);
    auto profiles = ProfileStore::Open(dir_ + "/collector.db");
    ASSERT_TRUE(profiles.ok()) << profiles.status();
    profiles_ = *std::move(profiles);
    Start(profiles_.get());
  }
  void Start(ProfileStore* store) {
    Stop();
    CollectorService::Options options;
    options.profiles = store;
    service_ = std::make_unique<CollectorService>(findings_.get(), options);
    auto running = StartServer("127.0.0.1:0", service_.get());
    ASSERT_TRUE(running.ok()) << running.status();
    server_ = std::move(running->server);
    stub_ = tokenwatch::v1::Collector::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", running->port), grpc::InsecureChannelCredentials()));
  }
  void Stop() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_.reset();
    service_.reset();
  }
  void TearDown() override {
    Stop();
    profiles_.reset();
    findings_.reset();
    std::filesystem::remove_all(dir_);
  }
  grpc::Status Send(const UploadProfilesRequest& r, UploadProfilesResponse* resp = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    UploadProfilesResponse ignored;
    return stub_->UploadProfiles(&ctx, r, resp != nullptr ? resp : &ignored);
  }
  grpc::Status List(const ListProfilesRequest& r, ListProfilesResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub_->ListProfiles(&ctx, r, resp);
  }

  std::string dir_;
  std::unique_ptr<FindingStore> findings_;
  std::unique_ptr<ProfileStore> profiles_;
  std::unique_ptr<CollectorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<tokenwatch::v1::Collector::Stub> stub_;
};

TEST_F(ProfileRpcTest, UploadedProfilesAreListedPerNode) {
  const absl::Time now = absl::Now();
  LearnedProfile a = Profile("payments", "api", {"/app/server"});
  profiles::SetTime(now, a.mutable_learning_started());
  profiles::SetTime(now + absl::Hours(24), a.mutable_learning_ends());
  LearnedProfile b = a;
  b.clear_token_readers();
  b.add_token_readers()->set_path("/usr/bin/vault-agent");
  UploadProfilesResponse resp;
  ASSERT_TRUE(Send(Upload("node-a", {a}), &resp).ok());
  EXPECT_EQ(resp.stored(), 1u);
  ASSERT_TRUE(Send(Upload("node-b", {b})).ok());
  ASSERT_TRUE(Send(Upload("node-b", {b})).ok());  // a repeat is harmless

  ListProfilesRequest req;
  req.set_namespace_("payments");
  req.set_workload("a*");
  ListProfilesResponse listed;
  ASSERT_TRUE(List(req, &listed).ok());
  ASSERT_EQ(listed.profiles_size(), 2);
  EXPECT_EQ(listed.profiles(0).node(), "node-a");
  EXPECT_EQ(listed.profiles(1).node(), "node-b");
  EXPECT_GE(profiles::TimeOf(listed.profiles(1).updated()), now - absl::Seconds(1));
  // What tokenwatchctl profile export prints: one entry, both nodes' readers.
  std::vector<LearnedProfile> copies(listed.profiles().begin(), listed.profiles().end());
  std::string yaml = profiles::RenderPolicyYaml(profiles::MergeProfiles(copies, absl::Now()));
  EXPECT_THAT(yaml, HasSubstr("- exe: /app/server\n"));
  EXPECT_THAT(yaml, HasSubstr("- exe: /usr/bin/vault-agent "));
  EXPECT_THAT(yaml, HasSubstr("learned on 2 nodes (node-a, node-b)"));
}

TEST_F(ProfileRpcTest, AMalformedUploadIsInvalidArgumentAndStoresNothing) {
  ASSERT_TRUE(Send(Upload("node-a", {Profile("payments", "api", {"/app/server"})})).ok());
  UploadProfilesRequest bad = Upload("node-a", {Profile("payments", "api", {"/x"})});
  bad.mutable_profiles(0)->clear_workload();
  grpc::Status s = Send(bad);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("profiles[0].workload: empty"));
  ListProfilesResponse listed;
  ASSERT_TRUE(List({}, &listed).ok());
  ASSERT_EQ(listed.profiles_size(), 1);  // the earlier copy stays
  EXPECT_EQ(listed.profiles(0).token_readers(0).path(), "/app/server");

  ListProfilesRequest over_limit;
  over_limit.set_limit(ProfileStore::kMaxListLimit + 1);
  ASSERT_TRUE(List(over_limit, &listed).ok());
  EXPECT_EQ(listed.profiles_size(), 1);

  ListProfilesRequest bad_list;
  bad_list.set_page_token("garbage!");
  EXPECT_EQ(List(bad_list, &listed).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ProfileRpcTest, WithoutAStoreBothRpcsAreUnimplemented) {
  Start(nullptr);
  EXPECT_EQ(Send(Upload("node-a", {})).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  ListProfilesResponse listed;
  EXPECT_EQ(List({}, &listed).error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

}  // namespace
}  // namespace tokenwatch::collector
