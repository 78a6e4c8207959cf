#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/k8s/cgroup.h"
#include "gtest/gtest.h"
#include "tests/agent/tokens/kubelet_fixture.h"

namespace tokenwatch::k8s {
namespace {

using tokens::fixture::TempDir;

constexpr char kUid[] = "0b5c9a3e-7f2d-4a61-9d1e-3c2b1a0f9e8d";
constexpr char kId[] = "4f1c2a0b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";

uint64_t InodeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

void MkdirAll(const std::string& root, const std::string& rel) {
  std::string path = root;
  size_t pos = 1;
  while (pos <= rel.size()) {
    size_t next = rel.find('/', pos);
    if (next == std::string::npos) next = rel.size();
    path = absl::StrCat(root, rel.substr(0, next));
    mkdir(path.c_str(), 0755);
    pos = next + 1;
  }
}

// Plain directories stand in for cgroups: on cgroup2 the id is the directory's inode number,
// and that is what the resolver reads.
class CgroupResolverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pod_ = absl::StrCat("/kubepods/burstable/pod", kUid);
    container_ = absl::StrCat(pod_, "/", kId);
    MkdirAll(tmp_.path(), container_);
    MkdirAll(tmp_.path(), "/system.slice/kubelet.service");
    // Control files, which the walk must not mistake for cgroups.
    std::ofstream(absl::StrCat(tmp_.path(), pod_, "/cgroup.procs")) << "1\n";
  }
  std::string Abs(const std::string& rel) { return absl::StrCat(tmp_.path(), rel); }

  TempDir tmp_;
  std::string pod_;
  std::string container_;
};

TEST_F(CgroupResolverTest, MapsIdsToPathsRelativeToTheMount) {
  auto r = CgroupResolver::Create(tmp_.path());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->PathOf(InodeOf(Abs(container_))), container_);
  EXPECT_EQ((*r)->PathOf(InodeOf(Abs(pod_))), pod_);
  EXPECT_EQ((*r)->PathOf(InodeOf(tmp_.path())), "/");
  EXPECT_EQ((*r)->PathOf(InodeOf(Abs("/system.slice/kubelet.service"))),
            "/system.slice/kubelet.service");
  EXPECT_FALSE((*r)->PathOf(InodeOf(Abs(absl::StrCat(pod_, "/cgroup.procs")))).has_value());
  // The resolved path feeds the pod parser.
  std::optional<ContainerRef> ref = ParseCgroupPath(*(*r)->PathOf(InodeOf(Abs(container_))));
  ASSERT_TRUE(ref.has_value());
  EXPECT_EQ(ref->pod_uid, kUid);
}

TEST_F(CgroupResolverTest, FindsCgroupCreatedAfterStart) {
  auto r = CgroupResolver::Create(tmp_.path());
  ASSERT_TRUE(r.ok()) << r.status();
  std::string fresh = absl::StrCat(pod_, "/", std::string(64, 'a'));
  MkdirAll(tmp_.path(), fresh);
  absl::SleepFor(absl::Milliseconds(150));  // past the rescan rate limit
  EXPECT_EQ((*r)->PathOf(InodeOf(Abs(fresh))), fresh);
}

TEST_F(CgroupResolverTest, FloodOfUnknownIdsRescansAtMostOncePer100ms) {
  auto r = CgroupResolver::Create(tmp_.path());
  ASSERT_TRUE(r.ok()) << r.status();
  absl::SleepFor(absl::Milliseconds(150));
  uint64_t before = (*r)->rescans();
  absl::Time start = absl::Now();
  for (uint64_t id = 1u << 30; id < (1u << 30) + 10000; ++id) (*r)->PathOf(id);
  absl::Duration took = absl::Now() - start;
  uint64_t walks = (*r)->rescans() - before;
  EXPECT_GE(walks, 1u);
  EXPECT_LE(walks, 1 + static_cast<uint64_t>(took / absl::Milliseconds(100)));
}

TEST_F(CgroupResolverTest, KeepsRecentlyRemovedCgroupResolvable) {
  auto r = CgroupResolver::Create(tmp_.path());
  ASSERT_TRUE(r.ok()) << r.status();
  uint64_t id = InodeOf(Abs(container_));
  ASSERT_EQ(rmdir(Abs(container_).c_str()), 0);
  absl::SleepFor(absl::Milliseconds(150));
  (*r)->PathOf(1u << 31);  // a miss forces a rescan that no longer sees the container
  // Events of a container that just exited still reach their pod.
  EXPECT_EQ((*r)->PathOf(id), container_);
}

// On the real cgroup2 mount (kernfs), this process's own cgroup resolves to what
// /proc/self/cgroup says.
TEST(CgroupResolver, ResolvesOwnCgroupOnThisHost) {
  absl::StatusOr<std::string> mount = FindCgroup2Mount();
  if (!mount.ok()) GTEST_SKIP() << "no cgroup2 here: " << mount.status();
  std::ifstream in("/proc/self/cgroup");
  std::string line, own;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0) own = line.substr(3);
  }
  if (own.empty()) GTEST_SKIP() << "no cgroup2 entry in /proc/self/cgroup";
  std::string abs = own == "/" ? *mount : absl::StrCat(*mount, own);
  struct stat st;
  if (stat(abs.c_str(), &st) != 0) GTEST_SKIP() << "own cgroup not visible (cgroup namespace)";
  auto r = CgroupResolver::Create();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->mount(), *mount);
  EXPECT_EQ((*r)->PathOf(st.st_ino), own);
}

TEST(CgroupResolver, CreateFailsForMissingMount) {
  EXPECT_FALSE(CgroupResolver::Create("/nonexistent/cgroup").ok());
}

std::string WriteFile(const TempDir& dir, const std::string& content) {
  std::string path = absl::StrCat(dir.path(), "/mountinfo");
  std::ofstream(path) << content;
  return path;
}

TEST(FindCgroup2Mount, HybridHierarchyUsesUnified) {
  TempDir dir;
  std::string path = WriteFile(dir, R"(22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
)");
  auto m = FindCgroup2Mount(path);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(*m, "/sys/fs/cgroup/unified");
}

TEST(FindCgroup2Mount, PureV2) {
  TempDir dir;
  std::string path = WriteFile(dir, R"(24 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
)");
  auto m = FindCgroup2Mount(path);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(*m, "/sys/fs/cgroup");
}

TEST(FindCgroup2Mount, PrefersTheHierarchyRootAndUnescapes) {
  TempDir dir;
  std::string path = WriteFile(dir, R"(50 24 0:30 /kubepods /mnt/sub rw - cgroup2 cgroup2 rw
51 24 0:30 / /run/my\040cgroup rw - cgroup2 cgroup2 rw
)");
  auto m = FindCgroup2Mount(path);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(*m, "/run/my cgroup");
}

TEST(FindCgroup2Mount, NoCgroup2IsNotFound) {
  TempDir dir;
  std::string path = WriteFile(dir, "31 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n");
  auto m = FindCgroup2Mount(path);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(FindCgroup2Mount(absl::StrCat(dir.path(), "/missing")).ok());
}

}  // namespace
}  // namespace tokenwatch::k8s
