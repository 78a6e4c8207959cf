#include "agent/detect/detector.h"

#include "agent/detect/finding_builder.h"

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace tokenwatch::detect {
namespace {

constexpr char kOwnerUid[] = "11111111-2222-3333-4444-555555555555";
constexpr char kOtherUid[] = "99999999-8888-7777-6666-555555555555";

TokenRead Read(const std::string& exe, const std::string& comm, std::optional<std::string> pod,
               absl::Time at = absl::FromUnixSeconds(1800000000)) {
  TokenRead read;
  read.time = at;
  read.token.pod_uid = kOwnerUid;
  read.token.volume = "kube-api-access-abcde";
  read.token.file_name = "token";
  read.token.host_path = "/var/lib/kubelet/pods/x/volumes/kubernetes.io~projected/v/..t/token";
  read.token.claims.namespace_name = "shop";
  read.token.claims.pod_name = "web-7d4b9c8f6d-x2x9q";
  read.token.claims.service_account = "web";
  read.lineage.process.pid = 4242;
  read.lineage.process.exe = exe;
  read.lineage.process.comm = comm;
  if (pod.has_value()) {
    k8s::ContainerRef ref;
    ref.pod_uid = *pod;
    ref.container_id = std::string(64, 'a');
    read.lineage.process.container = ref;
  }
  read.syscall = "openat";
  read.entrypoint_exe = "/app/controller";
  return read;
}

DetectorOptions Options(absl::Duration window = absl::Minutes(10)) {
  DetectorOptions o;
  o.node = "node-1";
  o.hook_mode = "tracepoint";
  o.dedup_window = window;
  return o;
}

TEST(Detector, EntrypointReadingItsOwnTokenIsExpected) {
  Detector d(Options());
  EXPECT_TRUE(d.OnTokenRead(Read("/app/controller", "controller", kOwnerUid)).empty());
}

TEST(Detector, ShellInOwnerPodIsUnexpectedAndHigh) {
  Detector d(Options());
  auto findings = d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid));
  ASSERT_EQ(findings.size(), 1u);
  EXPECT_EQ(findings[0].rule_id(), "TW001");
  EXPECT_EQ(findings[0].rule_name(), "token-read-unexpected");
  EXPECT_EQ(findings[0].severity(), v1::SEVERITY_HIGH);
  EXPECT_EQ(findings[0].token().owner().namespace_(), "shop");
  EXPECT_EQ(findings[0].process().pod().name(), "web-7d4b9c8f6d-x2x9q");
  EXPECT_NE(findings[0].summary().find("/app/controller"), std::string::npos);
}

TEST(Detector, OtherBinaryInOwnerPodIsMedium) {
  Detector d(Options());
  auto findings = d.OnTokenRead(Read("/usr/local/bin/sidecar", "sidecar", kOwnerUid));
  ASSERT_EQ(findings.size(), 1u);
  EXPECT_EQ(findings[0].severity(), v1::SEVERITY_MEDIUM);
}

TEST(Detector, EntrypointThatIsAShellIsStillFlagged) {
  Detector d(Options());
  TokenRead read = Read("/bin/sh", "sh", kOwnerUid);
  read.entrypoint_exe = "/bin/sh";
  EXPECT_EQ(d.OnTokenRead(read).size(), 1u);
}

TEST(Detector, ReaderInAnotherPodIsCrossPodCritical) {
  Detector d(Options());
  auto findings = d.OnTokenRead(Read("/bin/busybox", "cat", kOtherUid));
  ASSERT_EQ(findings.size(), 1u);
  EXPECT_EQ(findings[0].rule_id(), "TW002");
  EXPECT_EQ(findings[0].severity(), v1::SEVERITY_CRITICAL);
  EXPECT_EQ(findings[0].process().pod().uid(), kOtherUid);
  EXPECT_EQ(findings[0].token().owner().uid(), kOwnerUid);
}

TEST(Detector, CrossPodFindingNamesBothPods) {
  Detector d(Options());
  TokenRead read = Read("/bin/busybox", "cat", kOtherUid);
  read.lineage.process.pod_namespace = "attack";
  read.lineage.process.pod_name = "evil-0";
  auto findings = d.OnTokenRead(read);
  ASSERT_EQ(findings.size(), 1u);
  EXPECT_EQ(findings[0].process().pod().namespace_(), "attack");
  EXPECT_EQ(findings[0].process().pod().name(), "evil-0");
  EXPECT_NE(findings[0].summary().find("attack/evil-0"), std::string::npos);
  EXPECT_NE(findings[0].summary().find("shop/web-7d4b9c8f6d-x2x9q"), std::string::npos);
}

TEST(Detector, ExecSessionInTheOwnerPodIsTW004WithT1609) {
  Detector d(Options());
  TokenRead read = Read("/bin/busybox", "cat", kOwnerUid);
  read.lineage.process.exec_session = true;
  auto findings = d.OnTokenRead(read);
  ASSERT_EQ(findings.size(), 1u);
  EXPECT_EQ(findings[0].rule_id(), "TW004");
  EXPECT_EQ(findings[0].rule_name(), "token-read-exec-session");
  EXPECT_EQ(findings[0].severity(), v1::SEVERITY_HIGH);
  EXPECT_TRUE(findings[0].process().exec_session());
  ASSERT_EQ(findings[0].mitre_size(), 2);
  EXPECT_EQ(findings[0].mitre(1), "T1609");
}

TEST(Detector, HostProcessIsTW003UnlessANodeComponent) {
  Detector d(Options());
  auto findings = d.OnTokenRead(Read("/usr/bin/cat", "cat", std::nullopt));
  ASSERT_EQ(findings.size(), 1u);
  EXPECT_EQ(findings[0].rule_id(), "TW003");
  EXPECT_FALSE(findings[0].process().in_container());
  EXPECT_TRUE(d.OnTokenRead(Read("/usr/bin/kubelet", "kubelet", std::nullopt)).empty());
}

TEST(Detector, FoldsRepeatsIntoOneFindingWithACount) {
  Detector d(Options());
  absl::Time t0 = absl::FromUnixSeconds(1800000000);
  auto first = d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0));
  ASSERT_EQ(first.size(), 1u);
  EXPECT_TRUE(d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0 + absl::Seconds(5))).empty());
  EXPECT_TRUE(d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0 + absl::Seconds(9))).empty());
  auto flushed = d.Flush(t0 + absl::Seconds(10));
  ASSERT_EQ(flushed.size(), 1u);
  EXPECT_EQ(flushed[0].id(), first[0].id());
  EXPECT_EQ(flushed[0].count(), 3u);
  EXPECT_EQ(FromTimestamp(flushed[0].last_seen()), t0 + absl::Seconds(9));
  EXPECT_EQ(FromTimestamp(flushed[0].time()), t0);
  // Nothing new: nothing to flush.
  EXPECT_TRUE(d.Flush(t0 + absl::Seconds(11)).empty());
  EXPECT_EQ(d.folded(), 2u);
}

TEST(Detector, CountsEveryOpenAReadStandsFor) {
  // The hook folds a process's rereads and reports them later as one read
  // standing for many opens: the finding's count is every open.
  Detector d(Options());
  absl::Time t0 = absl::FromUnixSeconds(1800000000);
  TokenRead first = Read("/bin/busybox", "cat", kOwnerUid, t0);
  first.opens = 4;
  auto raised = d.OnTokenRead(first);
  ASSERT_EQ(raised.size(), 1u);
  EXPECT_EQ(raised[0].count(), 4u);
  TokenRead repeats = Read("/bin/busybox", "cat", kOwnerUid, t0 + absl::Seconds(30));
  repeats.opens = 596;
  EXPECT_TRUE(d.OnTokenRead(repeats).empty());
  auto flushed = d.Flush(t0 + absl::Minutes(11));
  ASSERT_EQ(flushed.size(), 1u);
  EXPECT_EQ(flushed[0].id(), raised[0].id());
  EXPECT_EQ(flushed[0].count(), 600u);
  EXPECT_EQ(d.folded(), 596u);
}

TEST(Detector, DifferentRuleOrExeDoesNotFold) {
  Detector d(Options());
  EXPECT_EQ(d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid)).size(), 1u);
  EXPECT_EQ(d.OnTokenRead(Read("/usr/bin/python3", "python3", kOwnerUid)).size(), 1u);
  EXPECT_EQ(d.OnTokenRead(Read("/bin/busybox", "cat", kOtherUid)).size(), 1u);
}

TEST(Detector, NewFindingAfterTheWindow) {
  Detector d(Options(absl::Minutes(1)));
  absl::Time t0 = absl::FromUnixSeconds(1800000000);
  auto a = d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0));
  auto b = d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0 + absl::Minutes(2)));
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_NE(a[0].id(), b[0].id());
}

TEST(Detector, ZeroWindowReportsEveryRead) {
  Detector d(Options(absl::ZeroDuration()));
  EXPECT_EQ(d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid)).size(), 1u);
  EXPECT_EQ(d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid)).size(), 1u);
}

TEST(IsShellOrTool, KnowsBusyboxAppletsByComm) {
  EXPECT_TRUE(IsShellOrTool("/bin/busybox", "ls"));
  EXPECT_TRUE(IsShellOrTool("/usr/bin/python3.11", "python3"));
  EXPECT_TRUE(IsShellOrTool("/x/y", "base64"));
  EXPECT_FALSE(IsShellOrTool("/app/controller", "controller"));
}

}  // namespace
}  // namespace tokenwatch::detect
