// The agent's profile uploader against the real collector service, in-process on loopback:
// when it uploads, what a re-upload replaces, retries, trimming to the collector's bounds, and
// the node-name check under mutual TLS.
#include "agent/export/profile_uploader.h"

#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/profile_policy.h"
#include "collector/profile_service.h"
#include "collector/profile_store.h"
#include "collector/service.h"
#include "collector/store.h"
#include "gtest/gtest.h"

namespace tokenwatch::exporting {
namespace {

v1::LearnedProfile Profile(const std::string& workload, std::vector<std::string> readers) {
  v1::LearnedProfile p;
  p.set_namespace_("payments");
  p.set_workload(workload);
  p.set_container("/app/server");
  for (const std::string& r : readers) p.add_token_readers()->set_path(r);
  profiles::SetTime(absl::Now() - absl::Minutes(5), p.mutable_learning_started());
  profiles::SetTime(absl::Now() + absl::Hours(24), p.mutable_learning_ends());
  return p;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

bool WaitFor(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return done();
}

// A stand-in for the learned baseline: profiles the test sets, and a generation that grows
// with each set.
class FakeBaseline {
 public:
  void Set(std::vector<v1::LearnedProfile> profiles) {
    absl::MutexLock lock(&mu_);
    profiles_ = std::move(profiles);
    ++generation_;
  }
  ProfileUploader::Source Source() {
    return {[this] {
              absl::MutexLock lock(&mu_);
              return generation_;
            },
            [this] {
              absl::MutexLock lock(&mu_);
              ++reads_;
              return profiles_;
            }};
  }
  int reads() {
    absl::MutexLock lock(&mu_);
    return reads_;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::LearnedProfile> profiles_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 1;
  int reads_ ABSL_GUARDED_BY(mu_) = 0;
};

class ProfileUploaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tw-uploader-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    StartCollector("127.0.0.1:0");
  }
  void TearDown() override {
    StopCollector();
    std::filesystem::remove_all(dir_);
  }

  void StartCollector(const std::string& listen, const collector::ServerTls* tls = nullptr) {
    auto findings = collector::FindingStore::Open(dir_ + "/collector.db");
    ASSERT_TRUE(findings.ok()) << findings.status();
    findings_ = *std::move(findings);
    auto profiles = collector::ProfileStore::Open(dir_ + "/collector.db");
    ASSERT_TRUE(profiles.ok()) << profiles.status();
    profiles_ = *std::move(profiles);
    collector::CollectorService::Options options;
    options.verify_node_names = tls != nullptr && !tls->client_ca.empty();
    options.profiles = profiles_.get();
    service_ = std::make_unique<collector::CollectorService>(findings_.get(), options);
    auto running = collector::StartServer(listen, service_.get(), tls);
    ASSERT_TRUE(running.ok()) << running.status();
    server_ = std::move(running->server);
    port_ = running->port;
  }
  void StopCollector() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_.reset();
    service_.reset();
    profiles_.reset();
    findings_.reset();
  }

  ProfileUploader::Options UploaderOptions(absl::Duration interval = absl::Minutes(1)) {
    ProfileUploader::Options o;
    o.channel.address = absl::StrCat("127.0.0.1:", port_);
    o.node = "node-1";
    o.agent_id = "agent-1";
    o.interval = interval;
    o.timeout = absl::Seconds(5);
    return o;
  }
  std::unique_ptr<ProfileUploader> Uploader(ProfileUploader::Options o) {
    auto u = ProfileUploader::Create(std::move(o), baseline_.Source());
    EXPECT_TRUE(u.ok()) << u.status();
    return u.ok() ? *std::move(u) : nullptr;
  }
  // "node workload reader,reader" of every stored profile.
  std::vector<std::string> Stored() {
    std::vector<std::string> out;
    auto page = profiles_->List({});
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) return out;
    for (const v1::LearnedProfile& p : page->profiles) {
      std::string readers;
      for (const v1::LearnedExecutable& e : p.token_readers()) {
        absl::StrAppend(&readers, readers.empty() ? "" : ",", e.path());
      }
      out.push_back(absl::StrCat(p.node(), " ", p.workload(), " ", readers));
    }
    return out;
  }

  std::string dir_;
  int port_ = 0;
  FakeBaseline baseline_;
  std::unique_ptr<collector::FindingStore> findings_;
  std::unique_ptr<collector::ProfileStore> profiles_;
  std::unique_ptr<collector::CollectorService> service_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(ProfileUploaderTest, UploadsAtStartThenOnlyWhatChangedAtMostOncePerInterval) {
  baseline_.Set({Profile("api", {"/app/server"})});
  // The uploader judges intervals by the times it is given, so these are exact.
  auto uploader = Uploader(UploaderOptions(absl::Seconds(60)));
  const absl::Time t0 = absl::Now();
  uploader->Tick(t0);
  ASSERT_TRUE(WaitFor([&] { return uploader->stats().uploads == 1; }));
  EXPECT_EQ(Stored(), std::vector<std::string>{"node-1 api /app/server"});

  // Nothing changed: no upload, not even a look at the profiles.
  const int reads = baseline_.reads();
  uploader->Tick(t0 + absl::Minutes(5));
  EXPECT_EQ(baseline_.reads(), reads);

  // A change within a minute of the last upload waits for the minute to pass.
  uploader->Tick(t0 + absl::Seconds(10));  // resets nothing: there was nothing to send
  baseline_.Set({Profile("api", {"/app/server", "/usr/bin/vault-agent"})});
  uploader->Tick(t0 + absl::Seconds(59));
  EXPECT_EQ(baseline_.reads(), reads);
  uploader->Tick(t0 + absl::Seconds(61));
  ASSERT_TRUE(WaitFor([&] { return uploader->stats().uploads == 2; }));
  EXPECT_EQ(Stored(), std::vector<std::string>{"node-1 api /app/server,/usr/bin/vault-agent"});
  EXPECT_EQ(uploader->stats().failures, 0u);
  uploader->Stop();
}

TEST_F(ProfileUploaderTest, ARetryAfterTheCollectorWasDownDeliversTheProfiles) {
  const int port = port_;
  StopCollector();
  baseline_.Set({Profile("api", {"/app/server"})});
  auto uploader = Uploader(UploaderOptions(absl::Milliseconds(200)));
  uploader->Tick(absl::Now());
  ASSERT_TRUE(WaitFor([&] { return uploader->stats().failures == 1; }));
  StartCollector(absl::StrCat("127.0.0.1:", port));
  // Retried on the first tick after the interval; ticks come every second in the agent.
  ASSERT_TRUE(WaitFor([&] {
    uploader->Tick(absl::Now());
    return uploader->stats().uploads == 1;
  }));
  EXPECT_EQ(Stored(), std::vector<std::string>{"node-1 api /app/server"});
  uploader->Stop();
}

TEST_F(ProfileUploaderTest, StopSendsWhatWasLearnedSinceTheLastUpload) {
  baseline_.Set({Profile("api", {"/app/server"})});
  auto uploader = Uploader(UploaderOptions(absl::Hours(1)));
  uploader->Tick(absl::Now());
  ASSERT_TRUE(WaitFor([&] { return uploader->stats().uploads == 1; }));
  baseline_.Set({Profile("api", {"/app/server"}), Profile("web", {"/bin/web"})});
  uploader->Stop(absl::Seconds(5));
  EXPECT_EQ(uploader->stats().uploads, 2u);
  EXPECT_EQ(Stored(), (std::vector<std::string>{"node-1 api /app/server", "node-1 web /bin/web"}));
}

TEST(ProfileUploaderBuildRequest, TrimsToWhatTheCollectorAccepts) {
  const absl::Time now = absl::Now();
  std::vector<v1::LearnedProfile> in;
  in.push_back(Profile("api", {"/app/server", "/tmp/evil\nname"}));
  v1::LearnedProfile many = Profile("many", {});
  for (int i = 0; i < profiles::kMaxExecutablesPerList + 10; ++i) {
    many.add_apiserver_clients()->set_path(absl::StrCat("/bin/c", i));
  }
  in.push_back(many);
  in.push_back(Profile("bad\tname", {"/x"}));  // cannot be keyed: stays on the node
  uint64_t trimmed = 0;
  v1::UploadProfilesRequest r =
      ProfileUploader::BuildRequest("node-1", "agent-1", in, now, &trimmed);
  EXPECT_EQ(trimmed, 1u + 10u + 1u);
  ASSERT_EQ(r.profiles_size(), 2);
  ASSERT_EQ(r.profiles(0).token_readers_size(), 1);
  EXPECT_EQ(r.profiles(0).token_readers(0).path(), "/app/server");
  EXPECT_EQ(r.profiles(1).apiserver_clients_size(), profiles::kMaxExecutablesPerList);
  EXPECT_TRUE(collector::ValidateUploadProfilesRequest(r, now).ok())
      << collector::ValidateUploadProfilesRequest(r, now);

  // A node with more than one upload can carry keeps under the receive limit.
  std::vector<v1::LearnedProfile> huge;
  for (int i = 0; i < 40; ++i) {
    v1::LearnedProfile p = Profile(absl::StrCat("w", i), {});
    for (int j = 0; j < 1000; ++j) {
      p.add_token_readers()->set_path(absl::StrCat("/", std::string(100, 'x'), j));
    }
    huge.push_back(std::move(p));
  }
  trimmed = 0;
  r = ProfileUploader::BuildRequest("node-1", "agent-1", huge, now, &trimmed);
  EXPECT_LE(r.ByteSizeLong(), profiles::kMaxUploadBytes);
  EXPECT_GT(trimmed, 0u);
  EXPECT_GT(r.profiles_size(), 0);
}

// Mutual TLS, certificates made at test time by collector/tls/make-test-ca.sh.
class ProfileUploaderTlsTest : public ProfileUploaderTest {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tw-uploader-tls-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ca_ = dir_ + "/ca";
    const std::string cmd = absl::StrCat("sh " TW_SOURCE_DIR "/collector/tls/make-test-ca.sh ", ca_,
                                         " node-1 node-2 >/dev/null");
    ASSERT_EQ(system(cmd.c_str()), 0) << cmd;
    tls_.cert_chain = ReadFile(ca_ + "/collector.pem");
    tls_.private_key = ReadFile(ca_ + "/collector.key");
    tls_.client_ca = ReadFile(ca_ + "/ca.pem");
    StartCollector("127.0.0.1:0", &tls_);
  }
  ProfileUploader::Options TlsOptions(const std::string& node, const std::string& cert) {
    ProfileUploader::Options o = UploaderOptions();
    o.node = node;
    o.channel.tls_ca = ca_ + "/ca.pem";
    o.channel.tls_cert = ca_ + "/" + cert + ".pem";
    o.channel.tls_key = ca_ + "/" + cert + ".key";
    return o;
  }
  std::string ca_;
  collector::ServerTls tls_;
};

TEST_F(ProfileUploaderTlsTest, ANodeUploadsOnlyUnderItsOwnCertificatesName) {
  baseline_.Set({Profile("api", {"/app/server"})});
  auto impostor = Uploader(TlsOptions("node-2", "node-1"));
  impostor->Tick(absl::Now());
  ASSERT_TRUE(WaitFor([&] { return impostor->stats().failures == 1; }));
  EXPECT_EQ(impostor->stats().uploads, 0u);
  EXPECT_TRUE(Stored().empty());
  impostor->Stop(absl::ZeroDuration());

  auto own = Uploader(TlsOptions("node-1", "node-1"));
  own->Tick(absl::Now());
  ASSERT_TRUE(WaitFor([&] { return own->stats().uploads == 1; }));
  EXPECT_EQ(Stored(), std::vector<std::string>{"node-1 api /app/server"});
  own->Stop();
}

TEST(ProfileUploaderCreate, FailsOnAnUnreadableTlsFile) {
  ProfileUploader::Options o;
  o.channel.address = "127.0.0.1:1";
  o.channel.tls_ca = "/nonexistent/ca.pem";
  auto u = ProfileUploader::Create(
      o, {[] { return uint64_t{0}; }, [] { return std::vector<v1::LearnedProfile>(); }});
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(std::string(u.status().message()),
            "collector_tls_ca /nonexistent/ca.pem: cannot read the file");
}

}  // namespace
}  // namespace tokenwatch::exporting
