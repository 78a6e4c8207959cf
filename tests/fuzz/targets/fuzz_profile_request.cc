// Fuzzes the collector's handling of the learned-profile RPCs, whose bytes come from any client
// that reaches the port: UploadProfilesRequest through ValidateUploadProfilesRequest, and
// ListProfilesRequest through ProfileQueryFromRequest and on into ProfileStore::List, which
// decodes the page token and matches the workload glob. Nothing may crash, and what validation
// accepts must hold what the rest relies on:
// - an accepted upload is stored whole by a real (in-memory) ProfileStore, one row per profile
//   (no two share a key), and lists back with the node stamped on every copy;
// - its merged profiles render to policy YAML that parses back to the same selectors (names
//   and paths end up in YAML: a name must not be able to break out of its scalar);
// - a refusal is INVALID_ARGUMENT and never anything else.
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/profile_policy.h"
#include "collector/profile_service.h"
#include "collector/profile_store.h"
#include "google/protobuf/stubs/logging.h"
#include "yaml-cpp/yaml.h"

namespace {

using tokenwatch::collector::ProfileQuery;
using tokenwatch::collector::ProfileQueryFromRequest;
using tokenwatch::collector::ProfileStore;
using tokenwatch::collector::ValidateUploadProfilesRequest;
using tokenwatch::v1::LearnedProfile;
using tokenwatch::v1::ListProfilesRequest;
using tokenwatch::v1::UploadProfilesRequest;

// The collector's clock for every input, so that a crash reproduces.
const absl::Time kNow = absl::FromUnixSeconds(1700000000);

// Holds the seed node's profiles for every List; accepted uploads come and go under their own
// node name.
ProfileStore* g_store = nullptr;
constexpr char kSeedNode[] = "seed-node";

void Check(bool ok) {
  if (!ok) std::abort();
}

// For set-up steps: says what failed before aborting.
void CheckOk(const absl::Status& s, const char* what) {
  if (s.ok()) return;
  std::fprintf(stderr, "%s: %s\n", what, std::string(s.message()).c_str());
  std::abort();
}

UploadProfilesRequest SeedUpload(const std::string& node) {
  UploadProfilesRequest upload;
  upload.set_node(node);
  upload.set_agent_id("agent");
  for (const char* workload : {"api", "web-frontend", "worker"}) {
    LearnedProfile* p = upload.add_profiles();
    p->set_namespace_("shop");
    p->set_workload(workload);
    p->set_container("/app/server");
    p->set_service_account("shop-sa");
    p->add_token_readers()->set_path("/app/server");
    p->add_apiserver_clients()->set_path("/app/server");
    p->mutable_learning_started()->set_seconds(1699990000);
    p->mutable_learning_ends()->set_seconds(1700090000);
  }
  return upload;
}

void WriteSeed(const std::string& path, const google::protobuf::Message& m) {
  FILE* out = std::fopen(path.c_str(), "wb");
  if (out == nullptr) return;
  const std::string bytes = m.SerializeAsString();
  std::fwrite(bytes.data(), 1, bytes.size(), out);
  std::fclose(out);
}

// Seeds: a valid upload, a list with every filter, and a list continuing from a real page token.
void WriteSeeds(const std::string& dir) {
  mkdir(dir.c_str(), 0700);
  WriteSeed(dir + "/upload", SeedUpload("node-a"));  // not the seed node: it is stored and listed
  ListProfilesRequest list;
  list.set_namespace_("shop");
  list.set_workload("web-*");
  list.set_node(kSeedNode);
  list.set_limit(1);
  WriteSeed(dir + "/list", list);
  ProfileQuery first;
  first.limit = 1;
  absl::StatusOr<tokenwatch::collector::ProfilePage> page = g_store->List(first);
  Check(page.ok() && !page->next_page_token.empty());
  ListProfilesRequest next;
  next.set_limit(1);
  next.set_page_token(page->next_page_token);
  WriteSeed(dir + "/list_next", next);
}

// The YAML of an accepted upload's profiles must parse back to one entry per merged profile,
// with the same selectors.
void CheckPolicyYaml(const UploadProfilesRequest& upload) {
  std::vector<LearnedProfile> copies(upload.profiles().begin(), upload.profiles().end());
  std::vector<tokenwatch::profiles::WorkloadProfile> merged =
      tokenwatch::profiles::MergeProfiles(copies, kNow);
  const std::string yaml = tokenwatch::profiles::RenderPolicyYaml(merged);
  // yaml-cpp reports a parse error by throwing; the agent's config loader catches it the same
  // way. Here any error means the rendering let a name break its scalar.
  try {
    YAML::Node workloads = YAML::Load(yaml)["policy"]["workloads"];
    Check(workloads.IsSequence() && workloads.size() == merged.size());
    for (size_t i = 0; i < merged.size(); ++i) {
      const LearnedProfile& p = merged[i].merged;
      const YAML::Node w = workloads[i];
      Check(w["namespace"].as<std::string>() == p.namespace_());
      Check(w["workload"].as<std::string>() == p.workload());
      Check(w["container"].as<std::string>() == (p.container().empty() ? "*" : p.container()));
    }
  } catch (const YAML::Exception&) {
    std::abort();
  }
}

void FuzzUpload(const uint8_t* data, size_t size) {
  UploadProfilesRequest upload;
  if (!upload.ParseFromArray(data, static_cast<int>(size))) return;
  absl::Status status = ValidateUploadProfilesRequest(upload, kNow);
  if (!status.ok()) {
    Check(status.code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  Check(!upload.node().empty() &&
        upload.profiles_size() <= tokenwatch::profiles::kMaxProfilesPerUpload);
  if (upload.node() == kSeedNode) return;  // the seed node's rows stay as they are
  std::vector<LearnedProfile> profiles(upload.profiles().begin(), upload.profiles().end());
  // A second profile with the same key would fail the table's primary key: validation must
  // have refused it.
  Check(g_store->ReplaceNode(upload.node(), profiles, kNow).ok());
  ProfileQuery query;
  query.node = upload.node();
  query.limit = ProfileStore::kMaxListLimit;
  absl::StatusOr<tokenwatch::collector::ProfilePage> page = g_store->List(query);
  Check(page.ok() && page->profiles.size() == profiles.size());
  for (const LearnedProfile& p : page->profiles) Check(p.node() == upload.node());
  Check(g_store->ReplaceNode(upload.node(), {}, kNow).ok());
  CheckPolicyYaml(upload);
}

void FuzzList(const uint8_t* data, size_t size) {
  ListProfilesRequest list;
  if (!list.ParseFromArray(data, static_cast<int>(size))) return;
  absl::StatusOr<ProfileQuery> query = ProfileQueryFromRequest(list);
  if (!query.ok()) {
    Check(query.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  absl::StatusOr<tokenwatch::collector::ProfilePage> page = g_store->List(*query);
  if (!page.ok()) {
    Check(page.status().code() == absl::StatusCode::kInvalidArgument);  // a foreign page token
    return;
  }
  const uint32_t limit = query->limit == 0 ? ProfileStore::kDefaultListLimit
                                            : std::min(query->limit, ProfileStore::kMaxListLimit);
  Check(page->profiles.size() <= limit);
  for (const LearnedProfile& p : page->profiles) {
    Check(query->namespace_name.empty() || p.namespace_() == query->namespace_name);
    Check(query->node.empty() || p.node() == query->node);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Protobuf logs every string that is not UTF-8 (a parse failure the target expects); the
  // fuzzer's own output is what the run is read by.
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  absl::StatusOr<std::unique_ptr<ProfileStore>> store = ProfileStore::Open(":memory:");
  CheckOk(store.status(), "open the profile store");
  g_store = store->release();  // lives as long as the process
  const UploadProfilesRequest seed = SeedUpload(kSeedNode);
  CheckOk(ValidateUploadProfilesRequest(seed, kNow), "validate the seed upload");
  std::vector<LearnedProfile> profiles(seed.profiles().begin(), seed.profiles().end());
  CheckOk(g_store->ReplaceNode(kSeedNode, profiles, kNow), "store the seed profiles");
  if (const char* seeds = std::getenv("TW_FUZZ_WRITE_SEEDS")) WriteSeeds(seeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzUpload(data, size);
  FuzzList(data, size);
  return 0;
}
