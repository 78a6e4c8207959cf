#include "agent/detect/detector.h"

#include "agent/detect/finding_builder.h"

#include "absl/container/flat_hash_map.h"
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

TEST(Detector, FoldsRepeatsIntoOneFindingResentOnceWhenTheWindowCloses) {
  Detector d(Options());
  absl::Time t0 = absl::FromUnixSeconds(1800000000);
  auto first = d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0));
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].count(), 1u);
  EXPECT_TRUE(d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0 + absl::Seconds(5))).empty());
  EXPECT_TRUE(d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0 + absl::Seconds(9))).empty());
  // The agent flushes every second: while the window is open, nothing goes
  // out again, however the count grows.
  for (int s = 1; s < 600; s += 60) EXPECT_TRUE(d.Flush(t0 + absl::Seconds(s)).empty()) << s;
  auto flushed = d.Flush(t0 + absl::Minutes(10));
  ASSERT_EQ(flushed.size(), 1u);
  EXPECT_EQ(flushed[0].id(), first[0].id());
  EXPECT_EQ(flushed[0].count(), 3u);
  EXPECT_EQ(FromTimestamp(flushed[0].last_seen()), t0 + absl::Seconds(9));
  EXPECT_EQ(FromTimestamp(flushed[0].time()), t0);
  // Sent once: the fold is closed and forgotten.
  EXPECT_TRUE(d.Flush(t0 + absl::Minutes(11)).empty());
  EXPECT_TRUE(d.FlushAll().empty());
  EXPECT_EQ(d.folded(), 2u);
  // The next read starts a new finding.
  auto next = d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0 + absl::Minutes(12)));
  ASSERT_EQ(next.size(), 1u);
  EXPECT_NE(next[0].id(), first[0].id());
}

TEST(Detector, AFoldNothingJoinedIsNotSentAgain) {
  Detector d(Options());
  absl::Time t0 = absl::FromUnixSeconds(1800000000);
  ASSERT_EQ(d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0)).size(), 1u);
  EXPECT_TRUE(d.FlushAll().empty());
  EXPECT_TRUE(d.Flush(t0 + absl::Minutes(10)).empty());
}

TEST(Detector, FlushAllSendsEveryGrownFoldNowAndOnlyOnce) {
  // At shutdown the agent takes every count still owed.
  Detector d(Options());
  absl::Time t0 = absl::FromUnixSeconds(1800000000);
  auto cat = d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0));
  auto py = d.OnTokenRead(Read("/usr/bin/python3", "python3", kOwnerUid, t0));
  auto quiet = d.OnTokenRead(Read("/usr/bin/perl", "perl", kOwnerUid, t0));
  ASSERT_EQ(cat.size() + py.size() + quiet.size(), 3u);
  for (int i = 1; i <= 4; ++i) {
    d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0 + absl::Seconds(i)));
  }
  d.OnTokenRead(Read("/usr/bin/python3", "python3", kOwnerUid, t0 + absl::Seconds(2)));
  auto all = d.FlushAll();
  ASSERT_EQ(all.size(), 2u);
  absl::flat_hash_map<std::string, uint64_t> count_by_id;
  for (const v1::Finding& f : all) count_by_id[f.id()] = f.count();
  EXPECT_EQ(count_by_id[cat[0].id()], 5u);
  EXPECT_EQ(count_by_id[py[0].id()], 2u);
  EXPECT_FALSE(count_by_id.contains(quiet[0].id()));
  EXPECT_TRUE(d.FlushAll().empty());
  // Still open: a later read folds in and is owed again, at window end.
  d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0 + absl::Seconds(30)));
  EXPECT_TRUE(d.Flush(t0 + absl::Minutes(5)).empty());
  auto end = d.Flush(t0 + absl::Minutes(10));
  ASSERT_EQ(end.size(), 1u);
  EXPECT_EQ(end[0].id(), cat[0].id());
  EXPECT_EQ(end[0].count(), 6u);
}

TEST(Detector, AReadAfterTheWindowStillLetsTheOldFoldReportItsCount) {
  // The first read of a new window can arrive before the flush that closes
  // the old one: the old count must not be lost.
  Detector d(Options(absl::Minutes(1)));
  absl::Time t0 = absl::FromUnixSeconds(1800000000);
  auto a = d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0));
  d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0 + absl::Seconds(30)));
  auto b = d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid, t0 + absl::Seconds(61)));
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_NE(a[0].id(), b[0].id());
  auto flushed = d.Flush(t0 + absl::Seconds(61));
  ASSERT_EQ(flushed.size(), 1u);
  EXPECT_EQ(flushed[0].id(), a[0].id());
  EXPECT_EQ(flushed[0].count(), 2u);
  EXPECT_TRUE(d.Flush(t0 + absl::Seconds(62)).empty());
}

TEST(Detector, ThousandsOfShortLivedCatsInAnExecSessionAreOneFinding) {
  Detector d(Options());
  absl::Time t0 = absl::FromUnixSeconds(1800000000);
  std::vector<v1::Finding> raised;
  for (uint32_t i = 0; i < 2000; ++i) {
    TokenRead read = Read("/bin/busybox", "cat", kOwnerUid, t0 + absl::Milliseconds(i));
    read.lineage.process.pid = 10000 + i;
    read.lineage.process.exec_session = true;
    for (v1::Finding& f : d.OnTokenRead(read)) raised.push_back(std::move(f));
  }
  ASSERT_EQ(raised.size(), 1u);
  EXPECT_EQ(raised[0].rule_id(), "TW004");
  auto all = d.FlushAll();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].id(), raised[0].id());
  EXPECT_EQ(all[0].count(), 2000u);
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

TEST(Detector, TwoConfiguredTokenFilesDoNotFoldTogether) {
  // Extra token paths from the config belong to no pod: only their paths differ.
  Detector d(Options());
  TokenRead a = Read("/bin/busybox", "cat", std::nullopt);
  a.token.pod_uid.clear();
  a.token.volume.clear();
  a.token.file_name.clear();
  a.token.host_path = "/etc/cloud/identity-token";
  TokenRead b = a;
  b.token.host_path = "/etc/other/token";
  EXPECT_EQ(d.OnTokenRead(a).size(), 1u);
  EXPECT_EQ(d.OnTokenRead(b).size(), 1u);
  EXPECT_TRUE(d.OnTokenRead(a).empty());
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

TEST(Detector, SeverityReasonsAreListedInTheirOwnField) {
  Detector d(Options());
  auto tool = d.OnTokenRead(Read("/bin/busybox", "cat", kOwnerUid));
  ASSERT_EQ(tool.size(), 1u);
  ASSERT_EQ(tool[0].severity_reasons_size(), 1);
  EXPECT_EQ(tool[0].severity_reasons(0), "reader is a shell, interpreter or transfer tool");
  // The summary says what happened; it does not repeat the reasons.
  EXPECT_EQ(tool[0].summary().find("Severity"), std::string::npos) << tool[0].summary();
  auto plain = d.OnTokenRead(Read("/usr/local/bin/sidecar", "sidecar", kOwnerUid));
  ASSERT_EQ(plain.size(), 1u);
  EXPECT_EQ(plain[0].severity_reasons_size(), 0);
  TokenRead uring = Read("/usr/local/bin/sidecar", "sidecar", kOtherUid);
  uring.io_uring = true;
  auto other = d.OnTokenRead(uring);
  ASSERT_EQ(other.size(), 1u);
  EXPECT_EQ(other[0].rule_id(), "TW005");
  EXPECT_EQ(other[0].severity(), v1::SEVERITY_CRITICAL);
  ASSERT_EQ(other[0].severity_reasons_size(), 1);
  EXPECT_EQ(other[0].severity_reasons(0), "reader is in another pod");
}

TEST(Detector, ALaterApiServerConnectionRaisesTheReadFindingAtOnce) {
  Detector d(Options());
  absl::Time t0 = absl::FromUnixSeconds(1800000000);
  TokenRead read = Read("/usr/local/bin/sidecar", "sidecar", kOwnerUid, t0);
  auto raised = d.OnTokenRead(read);
  ASSERT_EQ(raised.size(), 1u);
  ASSERT_EQ(raised[0].severity(), v1::SEVERITY_MEDIUM);
  const std::string id = d.last_finding_id();
  EXPECT_EQ(id, raised[0].id());
  TokenRead again = read;
  again.time = t0 + absl::Seconds(1);
  d.OnTokenRead(again);
  EXPECT_EQ(d.last_finding_id(), id) << "a folded read names the finding it folded into";
  auto up = d.OnTokenUsed("TW010", id);
  ASSERT_EQ(up.size(), 1u);
  EXPECT_EQ(up[0].id(), raised[0].id());
  EXPECT_EQ(up[0].severity(), v1::SEVERITY_CRITICAL);
  EXPECT_EQ(up[0].count(), 2u);
  ASSERT_EQ(up[0].severity_reasons_size(), 1);
  EXPECT_NE(up[0].severity_reasons(0).find("API server"), std::string::npos);
  // Said once; egress after that adds its reason but cannot lower it.
  EXPECT_TRUE(d.OnTokenUsed("TW010", id).empty());
  auto egress = d.OnTokenUsed("TW011", id);
  ASSERT_EQ(egress.size(), 1u);
  EXPECT_EQ(egress[0].severity(), v1::SEVERITY_CRITICAL);
  EXPECT_EQ(egress[0].severity_reasons_size(), 2);
  // Everything was exported with the raise: nothing owed at window end.
  EXPECT_TRUE(d.Flush(t0 + absl::Minutes(10)).empty());
  // The fold is closed: a use now has nothing to raise.
  EXPECT_TRUE(d.OnTokenUsed("TW011", id).empty());
}

TEST(Detector, EgressRaisesToHighAndOnlyTheReadersOwnFinding) {
  Detector d(Options());
  TokenRead read = Read("/usr/local/bin/sidecar", "sidecar", kOwnerUid);
  ASSERT_EQ(d.OnTokenRead(read).size(), 1u);
  const std::string id = d.last_finding_id();
  // An expected read names no finding; an unknown id raises nothing.
  TokenRead entrypoint = Read("/app/controller", "controller", kOwnerUid);
  EXPECT_TRUE(d.OnTokenRead(entrypoint).empty());
  EXPECT_EQ(d.last_finding_id(), "");
  EXPECT_TRUE(d.OnTokenUsed("TW011", "").empty());
  EXPECT_TRUE(d.OnTokenUsed("TW011", NewUuid()).empty());
  EXPECT_TRUE(d.OnTokenUsed("TW021", id).empty());
  auto up = d.OnTokenUsed("TW011", id);
  ASSERT_EQ(up.size(), 1u);
  EXPECT_EQ(up[0].severity(), v1::SEVERITY_HIGH);
  // Another reader's finding is untouched.
  auto other = d.OnTokenRead(Read("/usr/local/bin/other", "other", kOwnerUid));
  ASSERT_EQ(other.size(), 1u);
  EXPECT_EQ(other[0].severity(), v1::SEVERITY_MEDIUM);
}

TEST(IsShellOrTool, KnowsBusyboxAppletsByComm) {
  EXPECT_TRUE(IsShellOrTool("/bin/busybox", "ls"));
  EXPECT_TRUE(IsShellOrTool("/usr/bin/python3.11", "python3"));
  EXPECT_TRUE(IsShellOrTool("/x/y", "base64"));
  EXPECT_FALSE(IsShellOrTool("/app/controller", "controller"));
}

}  // namespace
}  // namespace tokenwatch::detect
