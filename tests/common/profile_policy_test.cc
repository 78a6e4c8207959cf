#include "common/profile_policy.h"

#include <string>
#include <vector>

#include "agent/detect/policy.h"
#include "gtest/gtest.h"
#include "yaml-cpp/yaml.h"

namespace tokenwatch::profiles {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1767225600);  // 2026-01-01

v1::LearnedProfile Copy(const std::string& node, std::vector<std::string> readers,
                        absl::Time started = kT0, absl::Duration window = absl::Hours(24)) {
  v1::LearnedProfile p;
  p.set_namespace_("payments");
  p.set_workload("api");
  p.set_container("/app/server");
  p.set_service_account("api");
  p.set_node(node);
  for (const std::string& r : readers) p.add_token_readers()->set_path(r);
  SetTime(started, p.mutable_learning_started());
  SetTime(started + window, p.mutable_learning_ends());
  return p;
}

std::vector<std::string> Readers(const v1::LearnedProfile& p) {
  std::vector<std::string> out;
  for (const v1::LearnedExecutable& e : p.token_readers()) out.push_back(e.path());
  return out;
}

detect::WorkloadKey Api() { return {"payments", "api", "/app/server", "api", ""}; }

TEST(MergeProfiles, OneEntryPerWorkloadWithEveryNodesReaders) {
  v1::LearnedProfile b =
      Copy("node-b", {"/usr/bin/vault-agent", "/app/server"}, kT0 + absl::Hours(3));
  b.add_apiserver_clients()->set_path("/app/server");
  v1::LearnedProfile sidecar = Copy("node-a", {"/envoy"});
  sidecar.set_container("/usr/local/bin/envoy");
  std::vector<WorkloadProfile> merged =
      MergeProfiles({Copy("node-a", {"/app/server"}), b, sidecar, Copy("node-c", {"/app/helper"})},
                    kT0 + absl::Hours(25));
  ASSERT_EQ(merged.size(), 2u);  // the sidecar container is its own entry
  const WorkloadProfile& api = merged[0];
  EXPECT_EQ(api.merged.container(), "/app/server");
  EXPECT_EQ(Readers(api.merged),
            (std::vector<std::string>{"/app/helper", "/app/server", "/usr/bin/vault-agent"}));
  EXPECT_EQ(api.merged.apiserver_clients_size(), 1);
  EXPECT_EQ(api.nodes, (std::vector<std::string>{"node-a", "node-b", "node-c"}));
  EXPECT_EQ(api.copies, 3u);
  EXPECT_EQ(api.merged.service_account(), "api");
  // The earliest start and the latest end: node-b joined three hours later and still learns.
  EXPECT_EQ(TimeOf(api.merged.learning_started()), kT0);
  EXPECT_EQ(TimeOf(api.merged.learning_ends()), kT0 + absl::Hours(27));
  EXPECT_EQ(api.still_learning, 1u);
  EXPECT_EQ(merged[1].merged.container(), "/usr/local/bin/envoy");
}

TEST(MergeProfiles, DisagreeingServiceAccountsGiveNoSelector) {
  v1::LearnedProfile other = Copy("node-b", {});
  other.set_service_account("api-v2");
  std::vector<WorkloadProfile> merged = MergeProfiles({Copy("node-a", {}), other}, kT0);
  ASSERT_EQ(merged.size(), 1u);
  EXPECT_EQ(merged[0].merged.service_account(), "");
}

TEST(RenderPolicyYaml, IsAPolicyTheAgentAcceptsAndAllowsTheLearnedReaders) {
  v1::LearnedProfile a = Copy("node-a", {"/app/server", "exited-before-resolved"});
  a.add_apiserver_clients()->set_path("/app/server");
  // Characters that mean something in YAML survive as data.
  v1::LearnedProfile odd = Copy("node-b", {"/opt/a: b # c", "/opt/'quoted' \"x\""});
  std::string yaml = RenderPolicyYaml(MergeProfiles({a, odd}, kT0 + absl::Hours(48)));
  auto policy = detect::Policy::Parse(yaml, "export");
  ASSERT_TRUE(policy.ok()) << policy.status() << "\n" << yaml;
  ASSERT_EQ((*policy)->workloads().size(), 1u) << yaml;
  const detect::WorkloadPolicy* w = (*policy)->Match(Api());
  ASSERT_NE(w, nullptr) << yaml;
  std::vector<std::string> exes;
  for (const detect::AllowedExecutable& e : w->executables) exes.push_back(e.exe);
  // A name without a path cannot be an allowlist entry.
  EXPECT_EQ(exes, (std::vector<std::string>{"/app/server", "/opt/'quoted' \"x\"", "/opt/a: b # c"}))
      << yaml;
  EXPECT_EQ(w->apiserver_contact, true);
  EXPECT_EQ(w->service_account_glob, "api");
  EXPECT_NE(yaml.find("learned on 2 nodes (node-a, node-b)"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("learning complete"), std::string::npos) << yaml;
}

TEST(RenderPolicyYaml, SaysWhereLearningIsStillOpen) {
  std::string yaml = RenderPolicyYaml(
      MergeProfiles({Copy("node-a", {"/app/server"}), Copy("node-b", {}, kT0 + absl::Hours(20))},
                    kT0 + absl::Hours(30)));
  EXPECT_NE(yaml.find("learning still open on 1 of 2 nodes, until 2026-01-02T20:00:00+00:00"),
            std::string::npos)
      << yaml;
  // A profile with no container known matches any container of the workload.
  v1::LearnedProfile unknown = Copy("", {"/app/server"});
  unknown.set_container("");
  auto policy = detect::Policy::Parse(RenderPolicyYaml(MergeProfiles({unknown}, kT0)), "x");
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ((*policy)->workloads()[0].container_glob, "*");
  // Nothing learned is still a valid (empty) policy.
  EXPECT_TRUE(detect::Policy::Parse(RenderPolicyYaml({}), "x").ok());
}

TEST(RenderPolicyYaml, ANodeNameCannotAddLinesToTheDocument) {
  v1::LearnedProfile p = Copy("node-a\npolicy:\n  rules:\n    TW001: off", {"/app/server"});
  std::string yaml = RenderPolicyYaml(MergeProfiles({p}, kT0));
  YAML::Node root = YAML::Load(yaml);
  EXPECT_FALSE(root["policy"]["rules"]) << yaml;
  EXPECT_EQ(yaml.find("\nTW001"), std::string::npos) << yaml;
}

}  // namespace
}  // namespace tokenwatch::profiles
