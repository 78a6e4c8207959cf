// Loads the real token_open programs and drives real syscalls at them.
#include "agent/probes/token_open_probe.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "agent/probes/proc_table.h"
#include "gtest/gtest.h"
#include "tests/testing/require_bpf.h"

namespace tokenwatch::probes {
namespace {

tw_file_id IdOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  // The kernel's s_dev encoding, as the inventory computes it.
  return tw_file_id{(static_cast<uint64_t>(major(st.st_dev)) << 20) | minor(st.st_dev),
                    st.st_ino};
}

class TokenOpenProbeBpfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TW_REQUIRE_ROOT_FOR_BPF();
    char tmpl[] = "/tmp/tw-probe-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    token_ = dir_ + "/token";
    other_ = dir_ + "/not-a-token";
    for (const std::string& p : {token_, other_}) {
      int fd = open(p.c_str(), O_CREAT | O_WRONLY, 0600);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(write(fd, "x", 1), 1);
      close(fd);
    }
    auto probe = TokenOpenProbe::Create(TokenOpenProbe::Options{});
    TW_SKIP_OR_FAIL_ON_BPF_ERROR(probe.status());
    probe_ = *std::move(probe);
    ASSERT_TRUE(probe_->Watch(IdOf(token_)).ok());
  }

  void TearDown() override {
    if (!dir_.empty()) {
      unlink(token_.c_str());
      unlink(other_.c_str());
      rmdir(dir_.c_str());
    }
  }

  // Records for our own process from the ring, polling up to ~2 s.
  std::vector<tw_token_open> Drain(size_t want) {
    std::vector<tw_token_open> out;
    TokenOpenProbe::Handler handler = [&](const tw_token_open& e) {
      if (e.tgid == static_cast<uint32_t>(getpid())) out.push_back(e);
    };
    for (int i = 0; i < 20 && out.size() < want; ++i) {
      EXPECT_TRUE(probe_->Poll(absl::Milliseconds(100), handler).ok());
    }
    // One more turn so that extra records would show.
    EXPECT_TRUE(probe_->Poll(absl::Milliseconds(100), handler).ok());
    return out;
  }

  std::string dir_, token_, other_;
  std::unique_ptr<TokenOpenProbe> probe_;
};

TEST_F(TokenOpenProbeBpfTest, ReportsOpenatWithReaderAndFile) {
  int fd = openat(AT_FDCWD, token_.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  close(fd);
  auto events = Drain(1);
  ASSERT_EQ(events.size(), 1u);
  const tw_token_open& e = events[0];
  EXPECT_EQ(e.hdr.type, TW_EVENT_TOKEN_OPEN);
  EXPECT_EQ(e.syscall, TW_SYSCALL_OPENAT);
  EXPECT_EQ(e.tgid, static_cast<uint32_t>(getpid()));
  EXPECT_EQ(e.reader.key.tgid, static_cast<uint32_t>(getpid()));
  EXPECT_EQ(e.reader.uid, getuid());
  EXPECT_EQ(e.file.ino, IdOf(token_).ino);
  EXPECT_EQ(e.file.dev, IdOf(token_).dev);
  // f_flags: the access mode as opened (O_CLOEXEC is the descriptor's, not the file's).
  EXPECT_EQ(e.flags & O_ACCMODE, static_cast<uint32_t>(O_RDONLY));
  int wfd = openat(AT_FDCWD, token_.c_str(), O_WRONLY | O_APPEND);
  ASSERT_GE(wfd, 0);
  close(wfd);
  auto more = Drain(1);
  ASSERT_EQ(more.size(), 1u);
  EXPECT_EQ(more[0].flags & O_ACCMODE, static_cast<uint32_t>(O_WRONLY));
  EXPECT_NE(more[0].flags & O_APPEND, 0u);
  EXPECT_NE(e.cgroup_id, 0u);
  // Without a shared process table the reader is taken from the task.
  EXPECT_EQ(e.reader_known, 0u);
  EXPECT_GT(e.reader.argv_len, 0u);
  // Its full path, built in the kernel.
  char self[4096] = {};
  ASSERT_GT(readlink("/proc/self/exe", self, sizeof(self) - 1), 0);
  EXPECT_STREQ(e.reader.exe, self);
  EXPECT_EQ(e.hdr.size, TW_TOKEN_OPEN_FIXED_SIZE);
}

TEST_F(TokenOpenProbeBpfTest, SeesEverySpellingOfThePath) {
  // A symlink, a relative path after chdir and /proc/self/root all reach the
  // same inode.
  std::string link = dir_ + "/link";
  ASSERT_EQ(symlink(token_.c_str(), link.c_str()), 0);
  char cwd[4096];
  ASSERT_NE(getcwd(cwd, sizeof(cwd)), nullptr);
  ASSERT_EQ(chdir(dir_.c_str()), 0);
  for (const std::string& p : {link, std::string("token"), "/proc/self/root" + token_}) {
    int fd = open(p.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0) << p;
    close(fd);
  }
  ASSERT_EQ(chdir(cwd), 0);
  unlink(link.c_str());
  EXPECT_EQ(Drain(3).size(), 3u);
}

TEST_F(TokenOpenProbeBpfTest, ReportsOpenat2) {
  open_how how{};
  how.flags = O_RDONLY;
  int fd = static_cast<int>(syscall(SYS_openat2, AT_FDCWD, token_.c_str(), &how, sizeof(how)));
  ASSERT_GE(fd, 0) << std::strerror(errno);
  close(fd);
  auto events = Drain(1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].syscall, TW_SYSCALL_OPENAT2);
}

TEST_F(TokenOpenProbeBpfTest, ReportsLegacyOpen) {
  int fd = static_cast<int>(syscall(SYS_open, token_.c_str(), O_RDONLY));
  ASSERT_GE(fd, 0);
  close(fd);
  auto events = Drain(1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].syscall, TW_SYSCALL_OPEN);
}

TEST_F(TokenOpenProbeBpfTest, ReportsOpenByHandleAt) {
  struct {
    file_handle handle;
    unsigned char bytes[MAX_HANDLE_SZ];
  } h{};
  h.handle.handle_bytes = MAX_HANDLE_SZ;
  int mount_id = 0;
  ASSERT_EQ(name_to_handle_at(AT_FDCWD, token_.c_str(), &h.handle, &mount_id, 0), 0)
      << std::strerror(errno);
  int mount_fd = open(dir_.c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(mount_fd, 0);
  int fd = open_by_handle_at(mount_fd, &h.handle, O_RDONLY);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  close(fd);
  close(mount_fd);
  auto events = Drain(2);
  // The directory open for mount_fd is not a token; only the handle open is.
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].syscall, TW_SYSCALL_OPEN_BY_HANDLE_AT);
}

TEST_F(TokenOpenProbeBpfTest, IgnoresOtherFilesAndUnwatchedTokens) {
  int fd = open(other_.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  close(fd);
  EXPECT_TRUE(Drain(1).empty());

  ASSERT_TRUE(probe_->Unwatch(IdOf(token_)).ok());
  EXPECT_EQ(*probe_->WatchedCount(), 0u);
  fd = open(token_.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  close(fd);
  EXPECT_TRUE(Drain(1).empty());
}

TEST_F(TokenOpenProbeBpfTest, DropsTheAgentsOwnReadsInTheKernel) {
  TokenOpenProbe::Options options;
  options.self_tgid = static_cast<uint32_t>(getpid());
  auto self_probe = TokenOpenProbe::Create(options);
  ASSERT_TRUE(self_probe.ok()) << self_probe.status();
  ASSERT_TRUE((*self_probe)->Watch(IdOf(token_)).ok());
  int fd = open(token_.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  close(fd);
  int seen = 0;
  TokenOpenProbe::Handler handler = [&](const tw_token_open&) { ++seen; };
  ASSERT_TRUE((*self_probe)->Poll(absl::Milliseconds(200), handler).ok());
  EXPECT_EQ(seen, 0);
  // The first probe, without the filter, did see it.
  EXPECT_EQ(Drain(1).size(), 1u);
}

TEST_F(TokenOpenProbeBpfTest, CountsTokenOpensPerCpu) {
  auto before = probe_->ReadStats();
  for (int i = 0; i < 5; ++i) {
    int fd = open(token_.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    close(fd);
  }
  Drain(5);
  auto after = probe_->ReadStats();
  EXPECT_EQ(after[TW_STAT_TOKEN_OPENS] - before[TW_STAT_TOKEN_OPENS], 5u);
  EXPECT_EQ(after[TW_STAT_RING_FULL], 0u);
}

void OpenClose(const std::string& path, int times) {
  for (int i = 0; i < times; ++i) {
    int fd = open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0) << path;
    close(fd);
  }
}

// Forks a child that opens `path` `times` times; returns its pid once it exited.
pid_t OpenInChild(const std::string& path, int times) {
  pid_t child = fork();
  if (child == 0) {
    for (int i = 0; i < times; ++i) {
      int fd = open(path.c_str(), O_RDONLY);
      if (fd < 0) _exit(1);
      close(fd);
    }
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  return child;
}

class TokenOpenProbeDedupTest : public TokenOpenProbeBpfTest {
 protected:
  std::unique_ptr<TokenOpenProbe> DedupProbe(uint32_t ring_bytes = 4u << 20) {
    TokenOpenProbe::Options options;
    options.dedup_window = absl::Minutes(10);
    options.ring_bytes = ring_bytes;
    auto probe = TokenOpenProbe::Create(options);
    EXPECT_TRUE(probe.ok()) << probe.status();
    if (!probe.ok()) return nullptr;
    EXPECT_TRUE((*probe)->Watch(IdOf(token_)).ok());
    return *std::move(probe);
  }

  static std::vector<tw_token_open> DrainFrom(TokenOpenProbe* probe) {
    std::vector<tw_token_open> out;
    TokenOpenProbe::Handler handler = [&](const tw_token_open& e) { out.push_back(e); };
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(probe->Poll(absl::Milliseconds(100), handler).ok());
    return out;
  }

  static std::vector<tw_token_open> Of(const std::vector<tw_token_open>& records, pid_t pid) {
    std::vector<tw_token_open> out;
    for (const tw_token_open& e : records) {
      if (e.tgid == static_cast<uint32_t>(pid)) out.push_back(e);
    }
    return out;
  }

  static uint64_t FoldedFor(TokenOpenProbe* probe, pid_t pid) {
    auto reopens = probe->ReadReopens();
    EXPECT_TRUE(reopens.ok()) << reopens.status();
    uint64_t folded = 0;
    for (const TokenOpenProbe::Reopen& r : *reopens) {
      if (r.key.proc.tgid == static_cast<uint32_t>(pid)) folded += r.value.folded;
    }
    return folded;
  }
};

TEST_F(TokenOpenProbeDedupTest, RereadsWithinTheWindowAreCountedNotRecorded) {
  auto probe = DedupProbe();
  ASSERT_NE(probe, nullptr);
  auto before = probe->ReadStats();
  OpenClose(token_, 50);
  auto mine = Of(DrainFrom(probe.get()), getpid());
  ASSERT_EQ(mine.size(), 1u) << "50 rereads, one record expected";
  EXPECT_EQ(mine[0].folded_before, 0u);
  auto reopens = probe->ReadReopens();
  ASSERT_TRUE(reopens.ok()) << reopens.status();
  const TokenOpenProbe::Reopen* entry = nullptr;
  for (const TokenOpenProbe::Reopen& r : *reopens) {
    if (r.key.proc.tgid == static_cast<uint32_t>(getpid())) entry = &r;
  }
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(entry->value.folded, 49u);
  EXPECT_EQ(entry->key.file.ino, IdOf(token_).ino);
  EXPECT_EQ(entry->key.access, static_cast<uint32_t>(TW_ACCESS_SYSCALL));
  // The key is the process as /proc names it: pid and start time in ticks.
  auto stat = ReadProcStat("/proc", static_cast<uint32_t>(getpid()));
  ASSERT_TRUE(stat.has_value());
  EXPECT_EQ(entry->key.proc.start_ticks, stat->start_ticks);
  EXPECT_EQ(entry->key.proc.start_ticks, mine[0].reader.key.start_ticks);
  auto after = probe->ReadStats();
  EXPECT_EQ(after[TW_STAT_REOPENS_FOLDED] - before[TW_STAT_REOPENS_FOLDED], 49u);
  EXPECT_EQ(after[TW_STAT_TOKEN_OPENS] - before[TW_STAT_TOKEN_OPENS], 50u);
  // The probe without a window still records every open.
  EXPECT_EQ(Drain(50).size(), 50u);
}

TEST_F(TokenOpenProbeDedupTest, EachProcessHasItsOwnRecordAndCount) {
  auto probe = DedupProbe();
  ASSERT_NE(probe, nullptr);
  pid_t a = OpenInChild(token_, 3);
  pid_t b = OpenInChild(token_, 1);
  OpenClose(token_, 2);
  auto records = DrainFrom(probe.get());
  EXPECT_EQ(Of(records, a).size(), 1u);
  EXPECT_EQ(Of(records, b).size(), 1u);
  EXPECT_EQ(Of(records, getpid()).size(), 1u);
  EXPECT_EQ(FoldedFor(probe.get(), a), 2u);
  EXPECT_EQ(FoldedFor(probe.get(), b), 0u);
  EXPECT_EQ(FoldedFor(probe.get(), getpid()), 1u);
}

TEST_F(TokenOpenProbeDedupTest, ALostRecordDoesNotHideTheNextOpen) {
  // One page of ring holds five records: fill it from children, unread.
  auto probe = DedupProbe(4096);
  ASSERT_NE(probe, nullptr);
  for (int i = 0; i < 8; ++i) OpenInChild(token_, 1);
  OpenClose(token_, 1);  // no room: this record is lost
  auto stats = probe->ReadStats();
  ASSERT_GT(stats[TW_STAT_RING_FULL], 0u) << "the ring did not fill; the test proves nothing";
  auto first = DrainFrom(probe.get());
  ASSERT_EQ(Of(first, getpid()).size(), 0u);
  // The lost record did not open a window: the next open is reported.
  OpenClose(token_, 1);
  EXPECT_EQ(Of(DrainFrom(probe.get()), getpid()).size(), 1u);
}

TEST(TokenOpenProbeKernelCheck, MissingBtfIsOneClearError) {
  TokenOpenProbe::Options options;
  options.btf_path = "/nonexistent/vmlinux";
  auto probe = TokenOpenProbe::Create(options);
  ASSERT_FALSE(probe.ok());
  EXPECT_EQ(probe.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(probe.status().message().find("BTF"), std::string::npos);
  EXPECT_EQ(probe.status().message().find('\n'), std::string::npos);
}

}  // namespace
}  // namespace tokenwatch::probes
