// The kernel's process table, driven by real forks and execs: lineage on a
// token-open record is complete even when every process exits at once.
#include "agent/probes/process_probe.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <climits>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "agent/k8s/cgroup.h"
#include "tokenwatch/token_use.h"
#include "agent/probes/token_open_probe.h"
#include "gtest/gtest.h"
#include "tests/testing/require_bpf.h"

namespace tokenwatch::probes {
namespace {

tw_file_id IdOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return tw_file_id{(static_cast<uint64_t>(major(st.st_dev)) << 20) | minor(st.st_dev),
                    st.st_ino};
}

std::string Str(const char* s, size_t n) { return std::string(s, strnlen(s, n)); }

// The kernel names a binary by its real path (/bin/sh is /usr/bin/dash).
std::string Real(const std::string& path) {
  char buf[PATH_MAX];
  return realpath(path.c_str(), buf) != nullptr ? buf : path;
}

// The NUL-separated argv of an entry, joined with spaces.
std::string Argv(const tw_proc& p) {
  std::string out(p.argv, std::min<size_t>(p.argv_len, sizeof(p.argv)));
  while (!out.empty() && out.back() == '\0') out.pop_back();
  for (char& c : out) {
    if (c == '\0') c = ' ';
  }
  return out;
}

class ProcessProbeBpfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TW_REQUIRE_ROOT_FOR_BPF();
    char tmpl[] = "/tmp/tw-lineage-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    token_ = dir_ + "/token";
    int fd = open(token_.c_str(), O_CREAT | O_WRONLY, 0600);
    ASSERT_GE(fd, 0);
    close(fd);
  }

  void Start(uint32_t max_processes = 32768) {
    ProcessProbe::Options options;
    options.max_processes = max_processes;
    auto processes = ProcessProbe::Create(options);
    TW_SKIP_OR_FAIL_ON_BPF_ERROR(processes.status());
    processes_ = *std::move(processes);
    auto mount = k8s::FindCgroup2Mount();
    auto seeded = processes_->Seed("/proc", mount.ok() ? *mount : "");
    ASSERT_TRUE(seeded.ok()) << seeded.status();
    EXPECT_GT(*seeded, 0);
    TokenOpenProbe::Options token_options;
    token_options.procs_fd = processes_->procs_fd();
    token_options.exited_fd = processes_->exited_fd();
    auto probe = TokenOpenProbe::Create(token_options);
    ASSERT_TRUE(probe.ok()) << probe.status();
    probe_ = *std::move(probe);
    ASSERT_TRUE(probe_->Watch(IdOf(token_)).ok());
  }

  void TearDown() override {
    if (!dir_.empty()) {
      unlink(token_.c_str());
      rmdir(dir_.c_str());
    }
  }

  // Records whose reader is `tgid` (0: any but us), polling up to ~3 s.
  std::vector<tw_token_open> Drain(size_t want, uint32_t tgid = 0) {
    std::vector<tw_token_open> out;
    TokenOpenProbe::Handler handler = [&](const tw_token_open& e) {
      if (tgid != 0 ? e.tgid == tgid : e.tgid != static_cast<uint32_t>(getpid())) {
        out.push_back(e);
      }
    };
    for (int i = 0; i < 30 && out.size() < want; ++i) {
      EXPECT_TRUE(probe_->Poll(absl::Milliseconds(100), handler).ok());
    }
    return out;
  }

  int Run(const std::vector<std::string>& argv) {
    pid_t pid = fork();
    if (pid == 0) {
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
  }

  std::string dir_, token_;
  std::unique_ptr<ProcessProbe> processes_;
  std::unique_ptr<TokenOpenProbe> probe_;
};

TEST_F(ProcessProbeBpfTest, ShortLivedChainIsCompleteWithArgv) {
  Start();
  if (HasFatalFailure() || IsSkipped()) return;
  // sh -> sh -> cat, all gone a millisecond after the read.
  // (The "; true" keeps each shell from exec'ing its last command.)
  std::string inner = "/bin/cat " + token_ + "; true";
  ASSERT_EQ(Run({"/bin/sh", "-c", "/bin/sh -c '" + inner + "'; true"}), 0);
  auto events = Drain(1);
  ASSERT_EQ(events.size(), 1u);
  const tw_token_open& e = events[0];
  EXPECT_EQ(e.reader_known, 1u);
  EXPECT_EQ(Str(e.reader.exe, sizeof(e.reader.exe)), Real("/bin/cat"));
  EXPECT_EQ(Argv(e.reader), "/bin/cat " + token_);
  ASSERT_GE(e.n_ancestors, 3u);
  EXPECT_EQ(Str(e.ancestors[0].exe, sizeof(e.ancestors[0].exe)), Real("/bin/sh"));
  EXPECT_EQ(Argv(e.ancestors[0]), "/bin/sh -c " + inner);
  EXPECT_EQ(Str(e.ancestors[1].exe, sizeof(e.ancestors[1].exe)), Real("/bin/sh"));
  EXPECT_EQ(Argv(e.ancestors[1]), "/bin/sh -c /bin/sh -c '" + inner + "'; true");
  EXPECT_EQ(e.ancestors[0].parent.tgid, e.ancestors[1].key.tgid);
  // Then us, the test, which forked the outer shell.
  EXPECT_EQ(e.ancestors[2].key.tgid, static_cast<uint32_t>(getpid()));
  // Each entry is keyed by (tgid, start): the parent link holds both.
  EXPECT_EQ(e.reader.parent.start_ticks, e.ancestors[0].key.start_ticks);
}

TEST_F(ProcessProbeBpfTest, ProcessOlderThanTheAgentHasLineageFromSeeding) {
  // A child that exists before the probes are loaded, then reads.
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  pid_t child = fork();
  if (child == 0) {
    char c;
    close(go[1]);
    if (read(go[0], &c, 1) != 1) _exit(2);
    int fd = open(token_.c_str(), O_RDONLY);
    _exit(fd >= 0 ? 0 : 1);
  }
  close(go[0]);
  Start();
  if (HasFatalFailure() || IsSkipped()) {
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    return;
  }
  ASSERT_EQ(write(go[1], "x", 1), 1);
  int status = 0;
  waitpid(child, &status, 0);
  auto events = Drain(1, static_cast<uint32_t>(child));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].reader_known, 1u);
  EXPECT_NE(events[0].reader.flags & TW_PROC_SEEDED, 0u);
  ASSERT_GE(events[0].n_ancestors, 1u);
  EXPECT_EQ(events[0].ancestors[0].key.tgid, static_cast<uint32_t>(getpid()));
}

TEST_F(ProcessProbeBpfTest, AReusedPidNeverInheritsAnOldProcesssEntry) {
  Start();
  if (HasFatalFailure() || IsSkipped()) return;
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  pid_t child = fork();
  if (child == 0) {
    char c;
    close(go[1]);
    if (read(go[0], &c, 1) != 1) _exit(2);
    execl("/bin/cat", "/bin/cat", token_.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(go[0]);
  // Plant an entry for the same pid with an earlier start: a dead process
  // whose pid was reused.
  tw_proc stale{};
  stale.key.tgid = static_cast<uint32_t>(child);
  stale.key.start_ticks = 1;
  std::strcpy(stale.exe, "/stale/binary");
  stale.exe_len = 13;
  ASSERT_EQ(bpf_map_update_elem(processes_->procs_fd(), &stale.key, &stale, BPF_ANY), 0);
  ASSERT_EQ(write(go[1], "x", 1), 1);
  waitpid(child, nullptr, 0);
  auto events = Drain(1, static_cast<uint32_t>(child));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(Str(events[0].reader.exe, sizeof(events[0].reader.exe)), Real("/bin/cat"));
  EXPECT_NE(events[0].reader.key.start_ticks, 1u);
}

TEST_F(ProcessProbeBpfTest, TaintIsInheritedAtForkAndClearedAtExit) {
  Start();
  if (HasFatalFailure() || IsSkipped()) return;
  // A child that waits, then forks a grandchild that waits too.
  int go[2], done[2];
  ASSERT_EQ(pipe(go), 0);
  ASSERT_EQ(pipe(done), 0);
  pid_t child = fork();
  if (child == 0) {
    char c;
    if (read(go[0], &c, 1) != 1) _exit(2);
    pid_t grandchild = fork();
    if (grandchild == 0) {
      if (read(done[0], &c, 1) != 1) _exit(2);
      _exit(0);
    }
    int status = 0;
    waitpid(grandchild, &status, 0);
    _exit(0);
  }
  // Taint the child (as the agent does after a read), then let it fork.
  auto key_of = [](pid_t pid) {
    tw_proc_key key{};
    key.tgid = static_cast<uint32_t>(pid);
    std::string path = "/proc/" + std::to_string(pid) + "/stat";
    FILE* f = fopen(path.c_str(), "r");
    char buf[1024] = {};
    if (f != nullptr) {
      size_t n = fread(buf, 1, sizeof(buf) - 1, f);
      buf[n] = '\0';
      fclose(f);
    }
    const char* p = strrchr(buf, ')');
    for (int field = 2; p != nullptr && field < 22; ++field) p = strchr(p + 1, ' ');
    if (p != nullptr) key.start_ticks = strtoull(p + 1, nullptr, 10);
    return key;
  };
  tw_proc_key child_key = key_of(child);
  tw_taint taint{42, ~0ull, 7};
  ASSERT_EQ(bpf_map_update_elem(processes_->taint_fd(), &child_key, &taint, BPF_ANY), 0);
  ASSERT_EQ(write(go[1], "x", 1), 1);
  // Find the grandchild: the child's only child.
  pid_t grandchild = 0;
  for (int i = 0; i < 100 && grandchild == 0; ++i) {
    std::string path = "/proc/" + std::to_string(child) + "/task/" + std::to_string(child) +
                       "/children";
    FILE* f = fopen(path.c_str(), "r");
    if (f != nullptr) {
      if (fscanf(f, "%d", &grandchild) != 1) grandchild = 0;
      fclose(f);
    }
    if (grandchild == 0) usleep(10000);
  }
  ASSERT_GT(grandchild, 0);
  tw_proc_key grandchild_key = key_of(grandchild);
  tw_taint inherited{};
  ASSERT_EQ(bpf_map_lookup_elem(processes_->taint_fd(), &grandchild_key, &inherited), 0)
      << "the grandchild did not inherit the taint";
  EXPECT_EQ(inherited.read_id, 42u);
  EXPECT_EQ(inherited.cgroup_id, 7u) << "the taint's cgroup scope travels with it";
  // Exit clears it.
  ASSERT_EQ(write(done[1], "x", 1), 1);
  waitpid(child, nullptr, 0);
  EXPECT_NE(bpf_map_lookup_elem(processes_->taint_fd(), &grandchild_key, &inherited), 0);
  EXPECT_NE(bpf_map_lookup_elem(processes_->taint_fd(), &child_key, &inherited), 0);
}

TEST_F(ProcessProbeBpfTest, AForkStormLeavesTheTableBoundedAndCountsEvictions) {
  constexpr uint32_t kTable = 256;
  Start(kTable);
  if (HasFatalFailure() || IsSkipped()) return;
  // More live processes than the table holds, bounded in count.
  std::vector<pid_t> children;
  for (int i = 0; i < 600; ++i) {
    pid_t pid = fork();
    if (pid == 0) {
      pause();
      _exit(0);
    }
    ASSERT_GT(pid, 0);
    children.push_back(pid);
  }
  EXPECT_LE(processes_->CountEntries(), kTable);
  for (pid_t pid : children) kill(pid, SIGKILL);
  for (pid_t pid : children) waitpid(pid, nullptr, 0);
  // Evicted entries show up as exits that found nothing.
  EXPECT_GT(processes_->ReadStats()[TW_STAT_PROC_MISSING], 0u);
  // And the newest process is still tracked: a read after the storm has
  // its reader from the table.
  ASSERT_EQ(Run({"/bin/cat", token_}), 0);
  auto events = Drain(1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].reader_known, 1u);
}

}  // namespace
}  // namespace tokenwatch::probes
