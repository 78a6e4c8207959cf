#include "agent/detect/baseline.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "agent/detect/detector.h"
#include "gtest/gtest.h"

namespace tokenwatch::detect {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1700000000);

WorkloadKey Api() { return WorkloadKey{"payments", "api", "/app/server", "api", ""}; }

class TempDir {
 public:
  TempDir() {
    char t[] = "/tmp/baselineXXXXXX";
    path_ = mkdtemp(t);
  }
  ~TempDir() {
    for (const char* f : {"/baseline.yaml", "/baseline.yaml.bad", "/baseline.yaml.tmp",
                          "/agent.yaml"}) {
      std::remove((path_ + f).c_str());
    }
    rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(Baseline, LearnsInsideTheWindowOnly) {
  auto b = Baseline::InMemory();
  b->SetLearning({true, absl::Hours(1)});
  EXPECT_EQ(b->RecordTokenRead(Api(), "/app/server", kT0), Observation::kLearning);
  EXPECT_EQ(b->RecordTokenRead(Api(), "/usr/bin/helper", kT0 + absl::Minutes(30)),
            Observation::kLearning);
  EXPECT_TRUE(b->Learning(Api(), kT0 + absl::Minutes(59)));
  EXPECT_FALSE(b->Learning(Api(), kT0 + absl::Minutes(61)));
  EXPECT_EQ(b->RecordTokenRead(Api(), "/usr/bin/helper", kT0 + absl::Hours(2)),
            Observation::kKnown);
  EXPECT_EQ(b->RecordTokenRead(Api(), "/tmp/new", kT0 + absl::Hours(2)), Observation::kNew);
  // Still new later: an unexpected reader is never learned after the window.
  EXPECT_EQ(b->RecordTokenRead(Api(), "/tmp/new", kT0 + absl::Hours(3)), Observation::kNew);
  // API-server contacts are a separate profile.
  EXPECT_EQ(b->RecordApiserverContact(Api(), "/usr/bin/helper", kT0 + absl::Hours(2)),
            Observation::kNew);
}

TEST(Baseline, LearningOffRecordsNothing) {
  auto b = Baseline::InMemory();
  b->SetLearning({false, absl::Hours(1)});
  EXPECT_EQ(b->RecordTokenRead(Api(), "/usr/bin/helper", kT0), Observation::kNew);
  EXPECT_EQ(b->workloads(), 0u);
}

TEST(Baseline, SurvivesARestartWithoutRestartingTheWindow) {
  TempDir dir;
  {
    auto b = Baseline::Open(dir.path());
    ASSERT_TRUE(b.ok()) << b.status();
    (*b)->SetLearning({true, absl::Hours(1)});
    (*b)->RecordTokenRead(Api(), "/usr/bin/helper", kT0);
    (*b)->RecordApiserverContact(Api(), "/app/server", kT0);
    ASSERT_TRUE((*b)->Save().ok());
  }
  auto b = Baseline::Open(dir.path());
  ASSERT_TRUE(b.ok()) << b.status();
  (*b)->SetLearning({true, absl::Hours(1)});
  EXPECT_EQ((*b)->RecordTokenRead(Api(), "/usr/bin/helper", kT0 + absl::Hours(5)),
            Observation::kKnown);
  EXPECT_EQ((*b)->RecordApiserverContact(Api(), "/app/server", kT0 + absl::Hours(5)),
            Observation::kKnown);
  // The window ran from the first sighting before the restart.
  EXPECT_EQ((*b)->RecordTokenRead(Api(), "/tmp/x", kT0 + absl::Hours(5)), Observation::kNew);
}

TEST(Baseline, DamagedFileIsMovedAsideAndReported) {
  TempDir dir;
  { std::ofstream(dir.path() + "/baseline.yaml") << "version: 1\nworkloads: [ {namespace: \n"; }
  std::string warning;
  auto ro = Baseline::Open(dir.path(), nullptr, /*read_only=*/true);
  EXPECT_FALSE(ro.ok());
  auto b = Baseline::Open(dir.path(), &warning);
  ASSERT_TRUE(b.ok());
  EXPECT_NE(warning.find("damaged"), std::string::npos) << warning;
  EXPECT_EQ(access((dir.path() + "/baseline.yaml.bad").c_str(), F_OK), 0);
  EXPECT_EQ((*b)->workloads(), 0u);
}

TEST(Baseline, ExportIsAPolicyTheAgentAccepts) {
  auto b = Baseline::InMemory();
  b->SetLearning({true, absl::Hours(1)});
  b->RecordTokenRead(Api(), "/usr/bin/helper", kT0);
  b->RecordTokenRead(Api(), "helper-without-path", kT0);
  b->RecordApiserverContact(Api(), "/app/server", kT0);
  WorkloadKey other{"tools", "web", "/bin/web", "default", ""};
  b->RecordTokenRead(other, "/bin/web", kT0);
  std::string yaml = b->ExportPolicyYaml();
  auto policy = Policy::Parse(yaml, "export");
  ASSERT_TRUE(policy.ok()) << policy.status() << "\n" << yaml;
  const WorkloadPolicy* w = (*policy)->Match(Api());
  ASSERT_NE(w, nullptr) << yaml;
  ASSERT_EQ(w->executables.size(), 1u) << yaml;
  EXPECT_EQ(w->executables[0].exe, "/usr/bin/helper");
  EXPECT_EQ(w->apiserver_contact, true);
  ASSERT_NE((*policy)->Match(other), nullptr);
  EXPECT_EQ((*policy)->Match(other)->apiserver_contact, std::nullopt);
  // A filter keeps one workload.
  auto filtered = Policy::Parse(b->ExportPolicyYaml("tools/*"), "export");
  ASSERT_TRUE(filtered.ok());
  EXPECT_EQ((*filtered)->workloads().size(), 1u);
}

// What the agent uploads to the collector, and when it has something new to upload.
TEST(Baseline, ProfilesAndGenerationFollowWhatWasLearned) {
  auto b = Baseline::InMemory();
  b->SetLearning({true, absl::Hours(1)});
  const uint64_t empty = b->generation();
  EXPECT_TRUE(b->Profiles().empty());
  b->RecordTokenRead(Api(), "/usr/bin/helper", kT0);
  b->RecordApiserverContact(Api(), "/app/server", kT0 + absl::Minutes(1));
  const uint64_t learned = b->generation();
  EXPECT_GT(learned, empty);
  // Known readers, readers after the window and an unchanged setting are no news.
  b->RecordTokenRead(Api(), "/usr/bin/helper", kT0 + absl::Minutes(2));
  b->RecordTokenRead(Api(), "/tmp/new", kT0 + absl::Hours(2));
  b->SetLearning({true, absl::Hours(1)});
  EXPECT_EQ(b->generation(), learned);

  std::vector<v1::LearnedProfile> profiles = b->Profiles();
  ASSERT_EQ(profiles.size(), 1u);
  const v1::LearnedProfile& p = profiles[0];
  EXPECT_EQ(p.namespace_(), "payments");
  EXPECT_EQ(p.workload(), "api");
  EXPECT_EQ(p.container(), "/app/server");
  EXPECT_EQ(p.service_account(), "api");
  ASSERT_EQ(p.token_readers_size(), 1);
  EXPECT_EQ(p.token_readers(0).path(), "/usr/bin/helper");
  ASSERT_EQ(p.apiserver_clients_size(), 1);
  EXPECT_EQ(p.apiserver_clients(0).path(), "/app/server");
  EXPECT_EQ(absl::FromUnixSeconds(p.learning_started().seconds()), kT0);
  EXPECT_EQ(absl::FromUnixSeconds(p.learning_ends().seconds()), kT0 + absl::Hours(1));
  EXPECT_FALSE(p.learning_disabled());
  EXPECT_TRUE(p.node().empty());

  // A longer window (a policy reload) changes what the collector should hold.
  b->SetLearning({true, absl::Hours(24)});
  EXPECT_GT(b->generation(), learned);
  EXPECT_EQ(absl::FromUnixSeconds(b->Profiles()[0].learning_ends().seconds()),
            kT0 + absl::Hours(24));
  b->SetLearning({false, absl::Hours(24)});
  EXPECT_TRUE(b->Profiles()[0].learning_disabled());
}

// The Detector with policy and baseline: the quiet defaults of issue 5.
class DetectorPolicyTest : public ::testing::Test {
 protected:
  void SetUp() override { Load("policy:\n  learning:\n    window: 1h\n"); }

  void Load(const std::string& yaml) {
    auto p = Policy::Parse(yaml, "agent.yaml");
    ASSERT_TRUE(p.ok()) << p.status();
    store_ = std::make_unique<PolicyStore>(*p, "");
    baseline_->SetLearning((*p)->learning());
    expectations_ = std::make_unique<Expectations>(store_.get(), baseline_.get(), &hasher_, "n1");
    DetectorOptions o;
    o.node = "n1";
    o.dedup_window = absl::ZeroDuration();
    o.expectations = expectations_.get();
    detector_ = std::make_unique<Detector>(o);
  }

  TokenRead Read(const std::string& exe, absl::Time at, uint32_t pid = 4242) {
    TokenRead r;
    r.time = at;
    r.token.pod_uid = "pod-1";
    r.token.volume = "kube-api-access-x";
    r.token.file_name = "token";
    r.token.claims.namespace_name = "payments";
    r.token.claims.pod_name = "api-7d9c8b6f4-zq2wn";
    r.token.claims.service_account = "api";
    r.entrypoint_exe = "/app/server";
    process::ProcessView& p = r.lineage.process;
    p.pid = pid;
    p.exe = exe;
    p.comm = exe.substr(exe.rfind('/') + 1).substr(0, 15);
    k8s::ContainerRef ref;
    ref.pod_uid = "pod-1";
    ref.container_id = std::string(64, 'a');
    p.container = ref;
    return r;
  }

  std::vector<v1::Finding> On(const TokenRead& r) { return detector_->OnTokenRead(r); }

  std::unique_ptr<Baseline> baseline_ = Baseline::InMemory();
  ExeHasher hasher_;
  std::unique_ptr<PolicyStore> store_;
  std::unique_ptr<Expectations> expectations_;
  std::unique_ptr<Detector> detector_;
};

TEST_F(DetectorPolicyTest, EntrypointAndLearnedReadersAreQuietNewOnesAreNot) {
  EXPECT_TRUE(On(Read("/app/server", kT0)).empty());
  EXPECT_TRUE(On(Read("/usr/bin/helper", kT0 + absl::Minutes(10))).empty());
  // After the window.
  absl::Time later = kT0 + absl::Hours(2);
  EXPECT_TRUE(On(Read("/app/server", later)).empty());
  EXPECT_TRUE(On(Read("/usr/bin/helper", later)).empty());
  auto f = On(Read("/tmp/dropper", later));
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].rule_id(), "TW001");
  EXPECT_EQ(f[0].severity(), v1::SEVERITY_MEDIUM);
}

TEST_F(DetectorPolicyTest, ShellsAreNeverLearnedAndAreHigh) {
  auto f = On(Read("/bin/busybox", kT0));  // inside the learning window
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity(), v1::SEVERITY_HIGH);
  ASSERT_EQ(f[0].severity_reasons_size(), 1);
  EXPECT_EQ(f[0].severity_reasons(0), "reader is a shell, interpreter or transfer tool");
  EXPECT_EQ(On(Read("/bin/busybox", kT0 + absl::Hours(2))).size(), 1u);
}

TEST_F(DetectorPolicyTest, PolicyAllowsByPathAndBySha256) {
  // The test binary itself stands for an allowlisted executable: its hash
  // comes from /proc/self/exe.
  auto self = hasher_.OfProcess(static_cast<uint32_t>(getpid()));
  ASSERT_TRUE(self.ok());
  Load("policy:\n  learning: {enabled: false}\n  workloads:\n    - namespace: payments\n"
       "      workload: api\n      executables:\n        - /usr/local/bin/vault-agent\n"
       "        - exe: /opt/pinned/tool\n          sha256: " + *self + "\n"
       "        - exe: /opt/wrong/tool\n          sha256: " + std::string(64, '0') + "\n"
       "        - /bin/sh\n");
  absl::Time t = kT0;
  EXPECT_TRUE(On(Read("/usr/local/bin/vault-agent", t)).empty());
  uint32_t me = static_cast<uint32_t>(getpid());
  EXPECT_TRUE(On(Read("/opt/pinned/tool", t, me)).empty());
  // The same content under another path, and a path whose content differs.
  EXPECT_EQ(On(Read("/opt/copied/tool", t, me)).size(), 1u);
  EXPECT_EQ(On(Read("/opt/wrong/tool", t, me)).size(), 1u);
  // A pinned reader that has exited cannot be verified: not allowed.
  TokenRead gone = Read("/opt/pinned/tool", t, me);
  gone.lineage.process.exited = true;
  EXPECT_EQ(On(gone).size(), 1u);
  // A shell the policy names is expected.
  EXPECT_TRUE(On(Read("/bin/sh", t)).empty());
  // Learning off: a new binary is unexpected at once.
  EXPECT_EQ(On(Read("/usr/bin/helper", t)).size(), 1u);
}

TEST_F(DetectorPolicyTest, RuleSeverityAndOff) {
  Load("policy:\n  learning: {enabled: false}\n  rules:\n    TW001: low\n"
       "  workloads:\n    - namespace: quiet\n      rules: {TW001: off}\n");
  auto f = On(Read("/usr/bin/helper", kT0));
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity(), v1::SEVERITY_LOW);
  ASSERT_EQ(f[0].severity_reasons_size(), 1);
  EXPECT_EQ(f[0].severity_reasons(0), "policy sets TW001 to low");
  // Context still raises a lowered rule, and says so after the policy.
  auto s = On(Read("/bin/bash", kT0));
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].severity(), v1::SEVERITY_HIGH);
  ASSERT_EQ(s[0].severity_reasons_size(), 2);
  EXPECT_EQ(s[0].severity_reasons(1), "reader is a shell, interpreter or transfer tool");
  TokenRead quiet = Read("/usr/bin/helper", kT0);
  quiet.token.claims.namespace_name = "quiet";
  EXPECT_TRUE(On(quiet).empty());
}

TEST_F(DetectorPolicyTest, APolicySettingNeverLowersWhatContextRaises) {
  // README's own example sets TW005 to high: a cross-pod io_uring read is
  // still critical, and the reasons say both, policy first.
  Load("policy:\n  learning: {enabled: false}\n  rules:\n    token-read-io-uring: high\n");
  TokenRead r = Read("/usr/bin/helper", kT0);
  r.io_uring = true;
  r.lineage.process.container->pod_uid = "another-pod";
  auto f = On(r);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].rule_id(), "TW005");
  EXPECT_EQ(f[0].severity(), v1::SEVERITY_CRITICAL);
  ASSERT_EQ(f[0].severity_reasons_size(), 1);
  EXPECT_EQ(f[0].severity_reasons(0), "reader is in another pod");
  // From the owner pod the policy's high stands.
  r.lineage.process.container->pod_uid = "pod-1";
  f = On(r);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity(), v1::SEVERITY_HIGH);
  EXPECT_EQ(f[0].severity_reasons_size(), 0);
}

TEST_F(DetectorPolicyTest, HostExecutablesFromPolicy) {
  Load("policy:\n  host_executables:\n    - /opt/backup/*\n");
  TokenRead r = Read("/opt/backup/agent", kT0);
  r.lineage.process.container.reset();
  EXPECT_TRUE(On(r).empty());
  r.lineage.process.exe = "/usr/bin/other";
  auto f = On(r);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].rule_id(), "TW003");
  // Built-in node components, including CNI plugins.
  r.lineage.process.exe = "/opt/cni/bin/calico";
  EXPECT_TRUE(On(r).empty());
}

TEST(PolicyRuntime, ExportProfileReadsTheStateDir) {
  TempDir dir;
  EXPECT_FALSE(ExportProfile(dir.path(), "").ok());
  {
    auto b = Baseline::Open(dir.path());
    ASSERT_TRUE(b.ok());
    (*b)->RecordTokenRead(Api(), "/usr/bin/helper", absl::Now());
    ASSERT_TRUE((*b)->Save().ok());
  }
  auto yaml = ExportProfile(dir.path(), "");
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_NE(yaml->find("/usr/bin/helper"), std::string::npos) << *yaml;
  EXPECT_NE(yaml->find("learning still open"), std::string::npos) << *yaml;
}

}  // namespace
}  // namespace tokenwatch::detect
