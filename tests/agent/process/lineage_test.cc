#include "agent/process/lineage.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/ticks.h"
#include "gtest/gtest.h"

namespace tokenwatch::process {
namespace {

constexpr uint32_t kContainerNs = 4026532500;
constexpr uint32_t kHostNs = 4026531836;

ProcessView P(const std::string& comm, uint32_t ns_pid, uint32_t pidns, bool in_container) {
  ProcessView v;
  v.comm = comm;
  v.ns_pid = ns_pid;
  v.pidns = pidns;
  if (in_container) {
    k8s::ContainerRef ref;
    ref.pod_uid = "uid";
    ref.container_id = std::string(64, 'a');
    v.container = ref;
  }
  return v;
}

TEST(MarkExecSession, ChainReachingTheRuntimeWithoutInitIsAnExecSession) {
  // cat <- sh <- sh <- runc (host)
  Lineage l;
  l.process = P("cat", 12, kContainerNs, true);
  l.ancestors = {P("sh", 11, kContainerNs, true), P("sh", 10, kContainerNs, true),
                 P("runc", 5000, kHostNs, false)};
  MarkExecSession(&l);
  EXPECT_TRUE(l.process.exec_session);
  EXPECT_TRUE(l.ancestors[0].exec_session);
  EXPECT_TRUE(l.ancestors[1].exec_session);
  EXPECT_FALSE(l.ancestors[2].exec_session);
}

TEST(MarkExecSession, DescendantOfTheEntrypointIsNot) {
  // cat <- sh <- entrypoint (pid 1) <- containerd-shim (host)
  Lineage l;
  l.process = P("cat", 7, kContainerNs, true);
  l.ancestors = {P("sh", 6, kContainerNs, true), P("nginx", 1, kContainerNs, true),
                 P("containerd-shim", 900, kHostNs, false)};
  MarkExecSession(&l);
  EXPECT_FALSE(l.process.exec_session);
  EXPECT_FALSE(l.ancestors[0].exec_session);
}

TEST(MarkExecSession, TheEntrypointItselfIsNot) {
  Lineage l;
  l.process = P("controller", 1, kContainerNs, true);
  l.ancestors = {P("runc", 5000, kHostNs, false)};
  MarkExecSession(&l);
  EXPECT_FALSE(l.process.exec_session);
}

TEST(MarkExecSession, UnknownWhenTheChainNeverLeavesTheContainer) {
  // The ancestry was cut before the boundary: no verdict rather than a guess.
  Lineage l;
  l.process = P("cat", 12, kContainerNs, true);
  l.ancestors = {P("sh", 11, kContainerNs, true)};
  MarkExecSession(&l);
  EXPECT_FALSE(l.process.exec_session);
}

TEST(MarkExecSession, HostProcessesAreNeverExecSessions) {
  Lineage l;
  l.process = P("cat", 300, kHostNs, false);
  l.ancestors = {P("bash", 200, kHostNs, false), P("sshd", 100, kHostNs, false)};
  MarkExecSession(&l);
  EXPECT_FALSE(l.process.exec_session);
}

// LineageBuilder over a fake /proc and an empty cgroup tree, fed kernel
// process-table entries as the probes would.
class FromRecordTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tw-lineage-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    ASSERT_EQ(mkdir((root_ + "/proc").c_str(), 0700), 0);
    ASSERT_EQ(mkdir((root_ + "/cgroup").c_str(), 0700), 0);
    proc_ = std::make_unique<ProcReader>(root_ + "/proc");
    auto cgroups = k8s::CgroupResolver::Create(root_ + "/cgroup");
    ASSERT_TRUE(cgroups.ok()) << cgroups.status();
    cgroups_ = *std::move(cgroups);
    builder_ = std::make_unique<LineageBuilder>(LineageBuilder::Options{}, proc_.get(),
                                                cgroups_.get(), &clock_);
  }
  void TearDown() override { (void)system(("rm -rf " + root_).c_str()); }

  // A live process in the fake /proc.
  void Live(uint32_t pid, uint32_t ppid, uint64_t start_ticks, const std::string& comm) {
    const std::string dir = absl::StrCat(root_, "/proc/", pid);
    mkdir(dir.c_str(), 0700);
    std::ofstream(dir + "/stat") << pid << " (" << comm << ") S " << ppid
                                 << " 0 0 0 0 0 0 0 0 0 0 0 0 0 20 0 1 0 " << start_ticks
                                 << " 0 0\n";
  }

  static tw_proc Entry(uint32_t pid, uint32_t image, uint64_t start_ticks, tw_proc_key parent,
                       const char* exe) {
    tw_proc e;
    std::memset(&e, 0, sizeof(e));
    e.key = {pid, image, start_ticks};
    e.parent = parent;
    e.start_boottime_ns = start_ticks * NsPerTick();
    std::strncpy(e.comm, "runc", sizeof(e.comm) - 1);
    std::strncpy(e.exe, exe, sizeof(e.exe) - 1);
    e.exe_len = static_cast<uint32_t>(std::strlen(exe));
    return e;
  }

  std::string root_;
  BootClock clock_;
  std::unique_ptr<ProcReader> proc_;
  std::unique_ptr<k8s::CgroupResolver> cgroups_;
  std::unique_ptr<LineageBuilder> builder_;
};

TEST_F(FromRecordTest, AnExecedImageIsMarkedAndNamesItsRealParent) {
  // runc init (pid 700) re-executed itself, then its child 710 connected:
  // 710 <- 700 (new image) <- 700 (the image it replaced) <- runc 600.
  tw_proc actor = Entry(710, 0, 52, {700, 0, 50}, "/app/connect_to");
  tw_proc chain[] = {Entry(700, 0, 50, {700, 1, 50}, "/memfd:runc_cloned"),
                     Entry(700, 1, 50, {600, 0, 40}, "/usr/sbin/runc"),
                     Entry(600, 0, 40, {1, 0, 1}, "/usr/sbin/runc")};
  Lineage l = builder_->FromRecord(710, 0, actor, chain, 3, /*truncated=*/true);
  ASSERT_EQ(l.ancestors.size(), 3u);
  EXPECT_FALSE(l.process.from_exec);
  EXPECT_EQ(l.process.ppid, 700u);
  EXPECT_TRUE(l.ancestors[0].from_exec) << "the new image is an exec of the next entry";
  EXPECT_EQ(l.ancestors[0].ppid, 600u) << "its parent is runc, not itself";
  EXPECT_FALSE(l.ancestors[1].from_exec);
  EXPECT_EQ(l.ancestors[1].ppid, 600u);
  EXPECT_FALSE(l.ancestors[2].from_exec);
}

TEST_F(FromRecordTest, AChainCutAtAnExecDoesNotShowTheSameProcessTwice) {
  // The kernel's chain ends on the new image (its previous one evicted);
  // /proc still has pid 700, the same process: its parent comes next.
  Live(700, 600, 50, "runc");
  Live(600, 1, 40, "runc");
  tw_proc actor = Entry(710, 0, 52, {700, 0, 50}, "/app/connect_to");
  tw_proc chain[] = {Entry(700, 0, 50, {700, 1, 50}, "/memfd:runc_cloned")};
  Lineage l = builder_->FromRecord(710, 0, actor, chain, 1, /*truncated=*/false);
  ASSERT_EQ(l.ancestors.size(), 2u);
  EXPECT_EQ(l.ancestors[0].pid, 700u);
  EXPECT_FALSE(l.ancestors[0].from_exec) << "its previous image is not in the chain";
  EXPECT_EQ(l.ancestors[0].ppid, 600u);
  EXPECT_EQ(l.ancestors[1].pid, 600u);
}

TEST_F(FromRecordTest, AReusedParentPidFromProcIsNotTheParent) {
  // 600 exited and its pid went to a younger process: the chain stops.
  Live(600, 1, 90, "python3");
  tw_proc actor = Entry(710, 0, 52, {600, 0, 40}, "/bin/curl");
  Lineage l = builder_->FromRecord(710, 0, actor, nullptr, 0, /*truncated=*/false);
  EXPECT_TRUE(l.ancestors.empty());
}

TEST_F(FromRecordTest, TheEventsCgroupIdIsTheProcesses) {
  tw_proc actor = Entry(710, 0, 52, {1, 0, 1}, "/bin/curl");
  actor.cgroup_id = 11;  // at exec
  Lineage l = builder_->FromRecord(710, 12, actor, nullptr, 0, /*truncated=*/true);
  EXPECT_EQ(l.process.cgroup_id, 12u) << "the cgroup at the event, not at exec";
}

}  // namespace
}  // namespace tokenwatch::process
