#include "agent/detect/correlator.h"

#include <sys/socket.h>
#include <unistd.h>

#include "agent/detect/finding_builder.h"
#include "gtest/gtest.h"

namespace tokenwatch::detect {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1800000000);
const uint64_t kTick = 1000000000ull / static_cast<uint64_t>(sysconf(_SC_CLK_TCK));
constexpr uint32_t kPodNs = 4026532999;
// cgroup v2 ids: the pod's container, another pod's container, the host
// session every host process here runs in.
constexpr uint64_t kPodCgroup = 5001;
constexpr uint64_t kOtherPodCgroup = 5002;
constexpr uint64_t kHostCgroup = 42;

process::ProcessView P(uint32_t pid, uint64_t start_ticks, uint32_t ns_pid, const char* argv0,
                       bool in_pod = true) {
  process::ProcessView v;
  v.pid = pid;
  v.start_boottime_ns = start_ticks * kTick;
  v.ns_pid = ns_pid;
  v.argv = {argv0};
  v.exe = std::string("/bin/") + argv0;
  v.cgroup_id = kHostCgroup;
  v.cgroup = "/user.slice/session-1.scope";
  if (in_pod) {
    k8s::ContainerRef ref;
    ref.pod_uid = "11111111-2222-3333-4444-555555555555";
    ref.container_id = std::string(64, 'c');
    v.container = ref;
    v.pidns = kPodNs;
    v.cgroup_id = kPodCgroup;
    v.cgroup = "/kubepods/pod" + ref.pod_uid + "/" + ref.container_id;
  }
  return v;
}

// A process of another pod's container (its own cgroup and pid namespace).
process::ProcessView OtherPod(uint32_t pid, uint64_t start_ticks, uint32_t ns_pid,
                              const char* argv0) {
  process::ProcessView v = P(pid, start_ticks, ns_pid, argv0);
  v.container->pod_uid = "99999999-2222-3333-4444-555555555555";
  v.container->container_id = std::string(64, 'd');
  v.pidns = kPodNs + 1;
  v.cgroup_id = kOtherPodCgroup;
  v.cgroup = "/kubepods/pod" + v.container->pod_uid + "/" + v.container->container_id;
  return v;
}

// cat (100) <- sh (90) <- entrypoint (pid 1 in the pod) <- runtime
TokenRead Read(absl::Time at) {
  TokenRead r;
  r.time = at;
  r.token.pod_uid = "11111111-2222-3333-4444-555555555555";
  r.token.claims.namespace_name = "shop";
  r.token.claims.pod_name = "web-0";
  r.token.claims.service_account = "web";
  r.lineage.process = P(100, 50, 12, "cat");
  r.lineage.ancestors = {P(90, 40, 11, "sh"), P(80, 10, 1, "controller"),
                         P(70, 5, 70, "containerd-shim", false)};
  r.syscall = "openat";
  return r;
}

k8s::IpEndpoint Ep(const std::string& text) { return *k8s::ParseIpEndpoint(text); }

Connection Conn(absl::Time at, process::ProcessView actor, std::vector<process::ProcessView> up,
                const std::string& dest, v1::TargetKind target) {
  Connection c;
  c.time = at;
  c.dest = Ep(dest);
  c.target = target;
  c.lineage.process = std::move(actor);
  c.lineage.ancestors = std::move(up);
  return c;
}

Correlator::Options Options() {
  Correlator::Options o;
  o.node = "node-1";
  o.hook_mode = "fanotify";
  o.window = absl::Minutes(10);
  return o;
}

TEST(Correlator, TaintsTheReaderAndItsAncestorsUpToTheContainersInit) {
  Correlator c(Options());
  Correlator::Taint t = c.OnTokenRead(Read(kT0));
  ASSERT_EQ(t.keys.size(), 2u);  // cat and sh, not the entrypoint
  EXPECT_EQ(t.keys[0], ProcKey(100, 50));
  EXPECT_EQ(t.keys[1], ProcKey(90, 40));
  EXPECT_EQ(t.expires, kT0 + absl::Minutes(10));
}

TEST(Correlator, AChildOfTheTaintedShellContactingTheApiServerIsTW010) {
  Correlator c(Options());
  c.OnTokenRead(Read(kT0));
  // curl forked from the tainted sh (T=$(cat token); curl ...).
  auto f = c.OnConnection(Conn(kT0 + absl::Seconds(1), P(101, 60, 13, "curl"),
                               {P(90, 40, 11, "sh")}, "10.96.0.1:443",
                               v1::TARGET_KIND_APISERVER),
                          0);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].rule_id(), "TW010");
  EXPECT_EQ(f[0].severity(), v1::SEVERITY_CRITICAL);
  EXPECT_EQ(f[0].reader().argv(0), "cat");
  EXPECT_EQ(f[0].process().argv(0), "curl");
  EXPECT_EQ(f[0].token().owner().name(), "web-0");
  ASSERT_EQ(f[0].connections_size(), 1);
  EXPECT_EQ(f[0].connections(0).address(), "10.96.0.1");
  EXPECT_EQ(f[0].connections(0).port(), 443u);
}

TEST(Correlator, ManyReadersOfOneTokenUsingItFromOneExecutableAreOneFinding) {
  // for i in $(seq 100); do sh -c 'T=$(cat token); curl ...'; done: a new
  // reader and a new curl each time, one finding counting every use.
  Correlator c(Options());
  std::vector<v1::Finding> raised;
  for (uint32_t i = 0; i < 100; ++i) {
    TokenRead r = Read(kT0 + absl::Seconds(i));
    r.lineage.process = P(1000 + 2 * i, 100 + i, 20 + i, "cat");
    r.lineage.ancestors = {P(3000 + i, 90 + i, 500 + i, "sh"), P(80, 10, 1, "controller")};
    c.OnTokenRead(r);
    for (v1::Finding& f : c.OnConnection(
             Conn(kT0 + absl::Seconds(i) + absl::Milliseconds(5), P(1001 + 2 * i, 101 + i, 21 + i,
                                                                   "curl"),
                  {P(3000 + i, 90 + i, 500 + i, "sh")}, "10.96.0.1:443",
                  v1::TARGET_KIND_APISERVER),
             0)) {
      raised.push_back(std::move(f));
    }
  }
  ASSERT_EQ(raised.size(), 1u);
  EXPECT_EQ(raised[0].rule_id(), "TW010");
  auto flushed = c.Flush(kT0 + absl::Minutes(11));
  ASSERT_EQ(flushed.size(), 1u);
  EXPECT_EQ(flushed[0].id(), raised[0].id());
  EXPECT_EQ(flushed[0].count(), 100u);
}

TEST(Correlator, AnUntaintedProcessContactingTheApiServerIsNothing) {
  Correlator c(Options());
  c.OnTokenRead(Read(kT0));
  // A child of the entrypoint, which is not tainted.
  auto f = c.OnConnection(Conn(kT0 + absl::Seconds(1), P(102, 70, 14, "controller"),
                               {P(80, 10, 1, "controller")}, "10.96.0.1:443",
                               v1::TARGET_KIND_APISERVER),
                          0);
  EXPECT_TRUE(f.empty());
}

TEST(Correlator, TaintExpiresAfterTheWindow) {
  Correlator c(Options());
  c.OnTokenRead(Read(kT0));
  auto f = c.OnConnection(Conn(kT0 + absl::Minutes(11), P(100, 50, 12, "cat"), {},
                               "192.0.2.10:80", v1::TARGET_KIND_OTHER),
                          0);
  EXPECT_TRUE(f.empty());
  // And Flush forgets the read.
  c.Flush(kT0 + absl::Minutes(11));
  const process::ProcessView cat = P(100, 50, 12, "cat");
  EXPECT_EQ(c.TaintedBy(cat, cat, kT0 + absl::Minutes(1)), 0u);
}

TEST(Correlator, LooksBackAtAConnectionMadeBeforeTheRead) {
  Correlator c(Options());
  Correlator::Taint t = c.OnTokenRead(Read(kT0));
  // wget --post-file: connected 2 s before it read.
  auto f = c.OnConnection(Conn(kT0 - absl::Seconds(2), P(100, 50, 12, "cat"), {},
                               "192.0.2.10:80", v1::TARGET_KIND_OTHER),
                          t.read_id);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].rule_id(), "TW011");
}

TEST(Correlator, ConnectionsInsideTheClusterAreNotEgress) {
  Correlator c(Options());
  c.OnTokenRead(Read(kT0));
  EXPECT_TRUE(c.OnConnection(Conn(kT0 + absl::Seconds(1), P(100, 50, 12, "cat"), {},
                                  "10.1.2.3:8080", v1::TARGET_KIND_OTHER),
                             0)
                  .empty());
  EXPECT_TRUE(c.OnConnection(Conn(kT0 + absl::Seconds(1), P(100, 50, 12, "cat"), {},
                                  "[fd12::7]:8080", v1::TARGET_KIND_OTHER),
                             0)
                  .empty());
}

TEST(Correlator, IPv6EgressIsTW011) {
  Correlator c(Options());
  c.OnTokenRead(Read(kT0));
  auto f = c.OnConnection(Conn(kT0 + absl::Seconds(1), P(100, 50, 12, "cat"), {},
                               "[2001:db8::10]:443", v1::TARGET_KIND_OTHER),
                          0);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].rule_id(), "TW011");
  EXPECT_EQ(f[0].connections(0).address(), "[2001:db8::10]");
}

TEST(Correlator, LaterConnectionsFoldAndAreSentAgainOnceWhenTheWindowCloses) {
  Correlator c(Options());
  c.OnTokenRead(Read(kT0));
  auto first = c.OnConnection(Conn(kT0 + absl::Seconds(1), P(101, 60, 13, "curl"),
                                   {P(90, 40, 11, "sh")}, "10.96.0.1:443",
                                   v1::TARGET_KIND_APISERVER),
                              0);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_TRUE(c.OnConnection(Conn(kT0 + absl::Seconds(5), P(101, 60, 13, "curl"),
                                  {P(90, 40, 11, "sh")}, "10.96.0.1:443",
                                  v1::TARGET_KIND_APISERVER),
                             0)
                  .empty());
  // Another executable using the same token is a finding of its own.
  EXPECT_EQ(c.OnConnection(Conn(kT0 + absl::Seconds(6), P(100, 50, 12, "cat"), {},
                                "10.96.0.1:443", v1::TARGET_KIND_APISERVER),
                           0)
                .size(),
            1u);
  // While the window is open the grown fold waits, however often Flush runs.
  for (int s = 6; s < 600; s += 60) {
    EXPECT_TRUE(c.Flush(kT0 + absl::Seconds(s)).empty()) << "at +" << s << "s";
  }
  EXPECT_TRUE(c.OnConnection(Conn(kT0 + absl::Minutes(9), P(101, 60, 13, "curl"),
                                  {P(90, 40, 11, "sh")}, "10.96.0.1:443",
                                  v1::TARGET_KIND_APISERVER),
                             0)
                  .empty());
  // The window counts from the first connection (kT0 + 1 s).
  EXPECT_TRUE(c.Flush(kT0 + absl::Seconds(600)).empty());
  auto closed = c.Flush(kT0 + absl::Seconds(601));
  ASSERT_EQ(closed.size(), 1u);  // the cat's finding never grew
  EXPECT_EQ(closed[0].id(), first[0].id());
  EXPECT_EQ(closed[0].count(), 3u);
  EXPECT_EQ(closed[0].connections_size(), 3);
  EXPECT_EQ(FromTimestamp(closed[0].last_seen()), kT0 + absl::Minutes(9));
  EXPECT_EQ(FromTimestamp(closed[0].time()), kT0 + absl::Seconds(1));
  // Once: the fold is forgotten with its window.
  EXPECT_TRUE(c.Flush(kT0 + absl::Seconds(602)).empty());
}

TEST(Correlator, AFoldNothingFoldedIntoIsNotSentAgain) {
  Correlator c(Options());
  Correlator::Taint t = c.OnTokenRead(Read(kT0));
  ASSERT_EQ(c.OnConnection(Conn(kT0 + absl::Seconds(1), P(100, 50, 12, "cat"), {},
                                "192.0.2.10:80", v1::TARGET_KIND_OTHER),
                           t.read_id)
                .size(),
            1u);
  EXPECT_TRUE(c.Flush(kT0 + absl::Minutes(11)).empty());
  EXPECT_TRUE(c.FlushAll().empty());
}

TEST(Correlator, FlushAllSendsEveryGrownFoldOnceAndKeepsThemOpen) {
  Correlator c(Options());
  auto wget = [](absl::Time at) {
    return Conn(at, P(200, 80, 5, "wget"), {}, "169.254.169.254:80", v1::TARGET_KIND_METADATA);
  };
  auto first = c.OnConnection(wget(kT0), 0);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_TRUE(c.OnConnection(wget(kT0 + absl::Seconds(2)), 0).empty());
  auto all = c.FlushAll();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].id(), first[0].id());
  EXPECT_EQ(all[0].count(), 2u);
  EXPECT_EQ(FromTimestamp(all[0].last_seen()), kT0 + absl::Seconds(2));
  // What was sent is not owed again.
  EXPECT_TRUE(c.FlushAll().empty());
  EXPECT_TRUE(c.Flush(kT0 + absl::Minutes(5)).empty());
  // Still open: a later contact folds into it and is owed at window end.
  auto again = c.OnConnection(wget(kT0 + absl::Seconds(3)), 0);
  EXPECT_TRUE(again.empty());
  auto closed = c.Flush(kT0 + absl::Minutes(10));
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_EQ(closed[0].count(), 3u);
}

TEST(Correlator, AContactAfterTheWindowOpensANewFindingAndTheOldOneStillGetsItsCount) {
  Correlator c(Options());
  auto wget = [](absl::Time at) {
    return Conn(at, P(200, 80, 5, "wget"), {}, "169.254.169.254:80", v1::TARGET_KIND_METADATA);
  };
  auto first = c.OnConnection(wget(kT0), 0);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_TRUE(c.OnConnection(wget(kT0 + absl::Minutes(5)), 0).empty());
  // No Flush ran since the window closed.
  auto second = c.OnConnection(wget(kT0 + absl::Minutes(10)), 0);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_NE(second[0].id(), first[0].id());
  EXPECT_EQ(second[0].count(), 1u);
  auto owed = c.Flush(kT0 + absl::Minutes(10));
  ASSERT_EQ(owed.size(), 1u);
  EXPECT_EQ(owed[0].id(), first[0].id());
  EXPECT_EQ(owed[0].count(), 2u);
  EXPECT_TRUE(c.FlushAll().empty());
}

TEST(Correlator, RepeatedArgvTokensOfOneExecutableFoldPerWindow) {
  Correlator c(Options());
  TokenRead r = Read(kT0);
  r.token.volume = "kube-api-access-abcde";
  r.token.file_name = "token";
  process::Lineage curl;
  curl.process = P(300, 90, 20, "curl");
  auto first = c.OnArgvToken(kT0, r.token, curl);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].rule_id(), "TW012");
  // The next minute's run: another process, the same executable and token.
  curl.process = P(301, 95, 21, "curl");
  EXPECT_TRUE(c.OnArgvToken(kT0 + absl::Minutes(1), r.token, curl).empty());
  // Another executable is a finding of its own.
  process::Lineage wget;
  wget.process = P(302, 96, 22, "wget");
  EXPECT_EQ(c.OnArgvToken(kT0 + absl::Minutes(1), r.token, wget).size(), 1u);
  EXPECT_TRUE(c.Flush(kT0 + absl::Minutes(2)).empty());
  auto closed = c.Flush(kT0 + absl::Minutes(10));
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_EQ(closed[0].id(), first[0].id());
  EXPECT_EQ(closed[0].count(), 2u);
  EXPECT_EQ(FromTimestamp(closed[0].last_seen()), kT0 + absl::Minutes(1));
}

TEST(Correlator, TheSameConnectionTwiceIsHandledOnce) {
  Correlator c(Options());
  Correlator::Taint t = c.OnTokenRead(Read(kT0));
  Connection conn = Conn(kT0 + absl::Seconds(1), P(100, 50, 12, "cat"), {}, "192.0.2.10:80",
                         v1::TARGET_KIND_OTHER);
  EXPECT_EQ(c.OnConnection(conn, t.read_id).size(), 1u);
  EXPECT_TRUE(c.OnConnection(conn, t.read_id).empty());
  EXPECT_TRUE(c.Flush(kT0 + absl::Seconds(2)).empty());
}

TEST(Correlator, MetadataContactIsTW021MediumOrHighWhenTainted) {
  Correlator c(Options());
  auto plain = c.OnConnection(Conn(kT0, P(200, 80, 5, "wget"), {}, "169.254.169.254:80",
                                   v1::TARGET_KIND_METADATA),
                              0);
  ASSERT_EQ(plain.size(), 1u);
  EXPECT_EQ(plain[0].rule_id(), "TW021");
  EXPECT_EQ(plain[0].severity(), v1::SEVERITY_MEDIUM);
  EXPECT_FALSE(plain[0].has_token());
  EXPECT_EQ(plain[0].severity_reasons_size(), 0);
  c.OnTokenRead(Read(kT0));
  auto tainted = c.OnConnection(Conn(kT0 + absl::Seconds(1), P(100, 50, 12, "cat"), {},
                                     "169.254.169.254:80", v1::TARGET_KIND_METADATA),
                                0);
  ASSERT_EQ(tainted.size(), 1u);
  EXPECT_EQ(tainted[0].severity(), v1::SEVERITY_HIGH);
  ASSERT_EQ(tainted[0].severity_reasons_size(), 1);
  EXPECT_EQ(tainted[0].severity_reasons(0), "the connecting process read a token first");
  // A host process's contact is not a container's.
  EXPECT_TRUE(c.OnConnection(Conn(kT0, P(300, 90, 300, "curl", false), {}, "169.254.169.254:80",
                                  v1::TARGET_KIND_METADATA),
                             0)
                  .empty());
}

TEST(Correlator, UnexpectedApiserverContactWithoutAReadIsTW020) {
  Correlator::Options o = Options();
  std::vector<std::string> asked;
  o.apiserver_contact_expected = [&](const process::ProcessView& p) {
    asked.push_back(p.argv[0]);
    return p.argv[0] == "controller";
  };
  Correlator c(o);
  auto expected = c.OnConnection(Conn(kT0, P(102, 70, 14, "controller"), {}, "10.96.0.1:443",
                                      v1::TARGET_KIND_APISERVER),
                                 0);
  EXPECT_TRUE(expected.empty());
  auto f = c.OnConnection(Conn(kT0, P(103, 71, 15, "kubectl"), {}, "10.96.0.1:443",
                               v1::TARGET_KIND_APISERVER),
                          0);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].rule_id(), "TW020");
  EXPECT_EQ(f[0].severity(), v1::SEVERITY_MEDIUM);
  // A tainted contact is TW010, not also TW020.
  c.OnTokenRead(Read(kT0));
  auto tainted = c.OnConnection(Conn(kT0 + absl::Seconds(1), P(100, 50, 12, "cat"), {},
                                     "10.96.0.1:443", v1::TARGET_KIND_APISERVER),
                                0);
  ASSERT_EQ(tainted.size(), 1u);
  EXPECT_EQ(tainted[0].rule_id(), "TW010");
  EXPECT_EQ(asked, (std::vector<std::string>{"controller", "kubectl"}));
}

TEST(Correlator, HostReaderTaintsOnlyItselfAndItsParent) {
  Correlator c(Options());
  TokenRead r = Read(kT0);
  r.lineage.process = P(500, 100, 500, "cat", false);
  r.lineage.ancestors = {P(400, 90, 400, "bash", false), P(300, 80, 300, "sshd", false),
                         P(1, 1, 1, "systemd", false)};
  Correlator::Taint t = c.OnTokenRead(r);
  ASSERT_EQ(t.keys.size(), 2u);
  EXPECT_EQ(t.keys[1], ProcKey(400, 90));
  EXPECT_EQ(t.cgroup_id, kHostCgroup);
}

// The taint boundary (issue 14). A host harness (bash 400) runs cat, which
// reads pod A's token under the kubelet directory; then `runc exec` into pod
// B runs a process there that contacts the API server with pod B's own
// identity. It descends from the tainted bash, but in another cgroup.
TokenRead HostRead() {
  TokenRead r = Read(kT0);
  r.lineage.process = P(500, 100, 500, "cat", false);
  r.lineage.ancestors = {P(400, 90, 400, "bash", false), P(1, 1, 1, "systemd", false)};
  return r;
}

TEST(CorrelatorTaintBoundary, AHostReadDoesNotFollowRuncExecIntoAnotherPod) {
  Correlator c(Options());
  c.OnTokenRead(HostRead());
  // connect_to <- runc init <- runc <- bash (tainted): the lineage the
  // kernel reports, runc init already in pod B's cgroup.
  process::ProcessView runc_init = OtherPod(610, 120, 1, "runc");
  process::ProcessView runc = P(600, 119, 600, "runc", false);
  auto f = c.OnConnection(Conn(kT0 + absl::Seconds(2), OtherPod(620, 121, 1, "connect_to"),
                               {runc_init, runc, P(400, 90, 400, "bash", false)},
                               "10.96.0.1:443", v1::TARGET_KIND_APISERVER),
                          0);
  EXPECT_TRUE(f.empty()) << f[0].DebugString();
  // Nor when the kernel's record or a look-back names the read: the
  // connector is still in another cgroup.
  auto looked_back =
      c.OnConnection(Conn(kT0 + absl::Seconds(3), OtherPod(621, 122, 1, "connect_to"),
                          {runc_init, runc, P(400, 90, 400, "bash", false)}, "10.96.0.1:443",
                          v1::TARGET_KIND_APISERVER),
                     1);
  EXPECT_TRUE(looked_back.empty());
}

TEST(CorrelatorTaintBoundary, AHostSiblingInTheReadersCgroupIsStillTW010) {
  Correlator c(Options());
  c.OnTokenRead(HostRead());
  auto f = c.OnConnection(Conn(kT0 + absl::Seconds(2), P(510, 101, 510, "curl", false),
                               {P(400, 90, 400, "bash", false)}, "10.96.0.1:443",
                               v1::TARGET_KIND_APISERVER),
                          0);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].rule_id(), "TW010");
}

TEST(CorrelatorTaintBoundary, AReaderThatExecdFromAShellStillTaintsItsParent) {
  // sh -c 'exec cat token': cat (500) <- the sh image it replaced (500).
  Correlator c(Options());
  TokenRead r = HostRead();
  r.lineage.process.from_exec = true;
  r.lineage.ancestors.insert(r.lineage.ancestors.begin(), P(500, 100, 500, "sh", false));
  Correlator::Taint t = c.OnTokenRead(r);
  ASSERT_EQ(t.keys.size(), 2u);
  EXPECT_EQ(t.keys[1], ProcKey(400, 90));
}

TEST(CorrelatorTaintBoundary, AHostReaderInAnotherCgroupThanItsParentTaintsOnlyItself) {
  // systemd-run, or a runtime's helper moved into a scope of its own.
  Correlator c(Options());
  TokenRead r = HostRead();
  r.lineage.ancestors[0].cgroup_id = kHostCgroup + 1;
  r.lineage.ancestors[0].cgroup = "/system.slice/other.service";
  Correlator::Taint t = c.OnTokenRead(r);
  ASSERT_EQ(t.keys.size(), 1u);
  EXPECT_EQ(t.keys[0], ProcKey(500, 100));
}

TEST(CorrelatorTaintBoundary, AContainerReadDoesNotReachTheHostParentOfItsExecSession) {
  Correlator c(Options());
  TokenRead r = Read(kT0);
  // cat <- sh, an exec session: sh's parent is runc on the host.
  r.lineage.ancestors = {P(90, 40, 11, "sh"), P(85, 39, 85, "runc", false),
                         P(84, 38, 84, "kubelet", false)};
  Correlator::Taint t = c.OnTokenRead(r);
  ASSERT_EQ(t.keys.size(), 2u);  // cat and sh
  // A host child of that runc connecting is not joined.
  auto f = c.OnConnection(Conn(kT0 + absl::Seconds(1), P(86, 45, 86, "curl", false),
                               {P(85, 39, 85, "runc", false)}, "10.96.0.1:443",
                               v1::TARGET_KIND_APISERVER),
                          0);
  EXPECT_TRUE(f.empty());
}

TEST(CorrelatorTaintBoundary, ANewExecSessionInTheSamePodIsNotJoined) {
  Correlator c(Options());
  TokenRead r = Read(kT0);
  r.lineage.ancestors = {P(90, 40, 11, "sh"), P(85, 39, 85, "runc", false)};
  c.OnTokenRead(r);
  // Same cgroup, but a sibling session: sh 95 from another runc.
  auto f = c.OnConnection(Conn(kT0 + absl::Seconds(5), P(96, 61, 31, "wget"),
                               {P(95, 60, 30, "sh"), P(94, 59, 94, "runc", false)},
                               "10.96.0.1:443", v1::TARGET_KIND_APISERVER),
                          0);
  EXPECT_TRUE(f.empty());
}

TEST(CorrelatorTaintBoundary, AReusedPidIsAnotherProcess) {
  Correlator c(Options());
  c.OnTokenRead(HostRead());
  // pid 500 again, started later: not the reader.
  auto f = c.OnConnection(Conn(kT0 + absl::Seconds(5), P(500, 300, 500, "curl", false),
                               {P(450, 290, 450, "python3", false)}, "10.96.0.1:443",
                               v1::TARGET_KIND_APISERVER),
                          0);
  EXPECT_TRUE(f.empty());
}

TEST(CorrelatorTaintBoundary, UnknownCgroupsAreNotJoined) {
  Correlator c(Options());
  TokenRead r = HostRead();
  r.lineage.process.cgroup_id = 0;
  r.lineage.process.cgroup.clear();
  c.OnTokenRead(r);
  auto f = c.OnConnection(Conn(kT0 + absl::Seconds(1), P(500, 100, 500, "cat", false), {},
                               "10.96.0.1:443", v1::TARGET_KIND_APISERVER),
                          0);
  EXPECT_TRUE(f.empty());
}

TEST(CorrelatorTaintBoundary, CgroupPathsDecideWhenIdsAreUnknown) {
  process::ProcessView a = P(1, 1, 1, "a");
  process::ProcessView b = P(2, 2, 2, "b");
  EXPECT_TRUE(SameCgroup(a, b));
  b.cgroup_id = 0;
  EXPECT_TRUE(SameCgroup(a, b));  // by path
  b.cgroup = "/kubepods/other";
  EXPECT_FALSE(SameCgroup(a, b));
  b.cgroup.clear();
  EXPECT_FALSE(SameCgroup(a, b));
}

}  // namespace
}  // namespace tokenwatch::detect
