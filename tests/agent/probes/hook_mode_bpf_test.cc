// The hook modes on the running kernel: which one auto picks, that refused
// modes leave nothing behind, fanotify marks (short-lived readers keep their
// lineage, rotation, queue overflow) and io_uring opens in the tracepoint and
// fanotify modes, with an fd and with a direct descriptor.
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "agent/probes/hook_mode.h"
#include "agent/probes/process_probe.h"
#include "gtest/gtest.h"
#include "tests/testing/require_bpf.h"

namespace tokenwatch::probes {
namespace {

tw_file_id IdOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return tw_file_id{KernelDev(st.st_dev), st.st_ino};
}

void WriteFile(const std::string& path) {
  std::ofstream out(path, std::ios::trunc);
  out << "not-a-real-token\n";
}

std::string Exe(const tw_proc& p) { return std::string(p.exe, strnlen(p.exe, sizeof(p.exe))); }

TEST(HookModeTest, ParsesTheFlagValues) {
  EXPECT_FALSE(ParseHookMode("auto")->has_value());
  EXPECT_EQ(**ParseHookMode("lsm"), HookMode::kLsm);
  EXPECT_EQ(**ParseHookMode("fentry"), HookMode::kFentry);
  EXPECT_EQ(**ParseHookMode("fanotify"), HookMode::kFanotify);
  EXPECT_EQ(**ParseHookMode("tracepoint"), HookMode::kTracepoint);
  auto bad = ParseHookMode("kprobe");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "--hook-mode kprobe"));
}

class HookModeBpfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TW_REQUIRE_ROOT_FOR_BPF();
    char tmpl[] = "/tmp/tw-hooks-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    token_ = dir_ + "/token";
    WriteFile(token_);
    auto processes = ProcessProbe::Create(ProcessProbe::Options{});
    TW_SKIP_OR_FAIL_ON_BPF_ERROR(processes.status());
    processes_ = *std::move(processes);
    // This process and its parents in the table, as the agent seeds it.
    ASSERT_TRUE(processes_->Seed("/proc", "/sys/fs/cgroup").ok());
  }

  void TearDown() override {
    hooks_.reset();
    if (!dir_.empty()) std::system(("rm -rf " + dir_).c_str());
  }

  TokenHooks::Options OptionsFor(const std::string& mode,
                                 absl::Duration dedup = absl::ZeroDuration()) {
    TokenHooks::Options options;
    options.probe.dedup_window = dedup;
    options.reopen_sweep = absl::ZeroDuration();  // every read: the tests see it at once
    options.requested = mode;
    options.probe.self_tgid = 0;  // this test process's own opens count
    options.probe.procs_fd = processes_->procs_fd();
    options.probe.exited_fd = processes_->exited_fd();
    return options;
  }

  void OpenHooks(const std::string& mode, absl::Duration dedup = absl::ZeroDuration()) {
    auto hooks = TokenHooks::Open(OptionsFor(mode, dedup));
    TW_SKIP_OR_FAIL_ON_BPF_ERROR(hooks.status());
    hooks_ = *std::move(hooks);
    ASSERT_TRUE(hooks_->Watch(IdOf(token_), token_).ok());
  }

  // Records polled for up to ~2 s, until `want` arrived.
  std::vector<tw_token_open> Drain(size_t want, absl::Duration max = absl::Seconds(2)) {
    std::vector<tw_token_open> out;
    const TokenOpenProbe::Handler handler = [&](const tw_token_open& e) { out.push_back(e); };
    absl::Time deadline = absl::Now() + max;
    while (absl::Now() < deadline && out.size() < want) {
      EXPECT_TRUE(hooks_->Poll(absl::Milliseconds(50), handler).ok());
    }
    // A little longer: nothing more must come (one open, one record).
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(hooks_->Poll(absl::Milliseconds(50), handler).ok());
    return out;
  }

  // Runs argv to completion (a short-lived child of this process).
  void Run(std::vector<std::string> argv) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      std::vector<char*> args;
      for (std::string& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      int null = open("/dev/null", O_WRONLY);
      dup2(null, 1);
      execv(args[0], args.data());
      _exit(127);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << argv[0];
    last_child_ = static_cast<uint32_t>(pid);
  }

  // io_uring openat from this process; direct: into fixed-file slot 0.
  void UringOpen(bool direct) {
    io_uring ring;
    ASSERT_EQ(io_uring_queue_init(4, &ring, 0), 0);
    if (direct) {
      int slots[1] = {-1};
      ASSERT_EQ(io_uring_register_files(&ring, slots, 1), 0);
    }
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (direct) {
      io_uring_prep_openat_direct(sqe, AT_FDCWD, token_.c_str(), O_RDONLY, 0, 0);
    } else {
      io_uring_prep_openat(sqe, AT_FDCWD, token_.c_str(), O_RDONLY | O_CLOEXEC, 0);
    }
    ASSERT_EQ(io_uring_submit(&ring), 1);
    io_uring_cqe* cqe = nullptr;
    ASSERT_EQ(io_uring_wait_cqe(&ring, &cqe), 0);
    int res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
    ASSERT_GE(res, 0) << strerror(-res);
    if (!direct) close(res);
    io_uring_queue_exit(&ring);
  }

  std::string dir_, token_;
  uint32_t last_child_ = 0;
  std::unique_ptr<ProcessProbe> processes_;
  std::unique_ptr<TokenHooks> hooks_;
};

TEST_F(HookModeBpfTest, AutoTakesTheStrongestModeAndSaysWhyOthersWereRefused) {
  OpenHooks("auto");
  // Every mode stronger than the one chosen was refused, with a reason.
  std::vector<std::string> passed;
  for (const std::string& r : hooks_->refusals()) passed.push_back(r.substr(0, r.find(':')));
  std::vector<std::string> expected;
  for (HookMode m : {HookMode::kLsm, HookMode::kFentry, HookMode::kFanotify}) {
    if (m == hooks_->mode()) break;
    expected.push_back(HookModeName(m));
  }
  EXPECT_EQ(passed, expected) << absl::StrJoin(hooks_->refusals(), "\n");
  // As root, fanotify is always possible: tracepoints are never the pick.
  EXPECT_NE(hooks_->mode(), HookMode::kTracepoint);
  EXPECT_FALSE(hooks_->attached().empty());
}

TEST_F(HookModeBpfTest, AnExplicitModeTheKernelRefusesFailsWithTheReason) {
  for (const char* mode : {"lsm", "fentry"}) {
    auto hooks = TokenHooks::Open(OptionsFor(mode));
    if (hooks.ok()) {
      EXPECT_EQ((*hooks)->mode_name(), std::string(mode));  // this kernel allows it
      continue;
    }
    EXPECT_TRUE(absl::StartsWith(hooks.status().message(), absl::StrCat("--hook-mode ", mode)))
        << hooks.status().message();
  }
  // Nothing of a refused attempt stays loaded: the next mode still works.
  OpenHooks("fanotify");
  EXPECT_EQ(hooks_->mode(), HookMode::kFanotify);
}

TEST_F(HookModeBpfTest, FanotifyKeepsTheLineageOfAReaderThatAlreadyExited) {
  OpenHooks("fanotify");
  Run({"/bin/cat", token_});
  std::vector<tw_token_open> events = Drain(1);
  ASSERT_EQ(events.size(), 1u);
  const tw_token_open& e = events[0];
  EXPECT_EQ(e.tgid, last_child_);
  EXPECT_EQ(e.hook, TW_HOOK_FANOTIFY);
  EXPECT_EQ(e.file.ino, IdOf(token_).ino);
  // cat exited before the agent read the event: the exited table had it.
  EXPECT_EQ(e.reader_known, 1u);
  EXPECT_TRUE(absl::EndsWith(Exe(e.reader), "/cat")) << Exe(e.reader);
  EXPECT_NE(e.reader.flags & TW_PROC_EXITED, 0u);
  ASSERT_GE(e.n_ancestors, 1u);
  EXPECT_EQ(e.ancestors[0].key.tgid, static_cast<uint32_t>(getpid()));
}

TEST_F(HookModeBpfTest, FanotifyMarksFollowRotation) {
  OpenHooks("fanotify");
  tw_file_id old_id = IdOf(token_);
  // The kubelet's swap: a new file takes the path, the old one is dropped.
  std::string next = dir_ + "/token.new";
  WriteFile(next);
  ASSERT_EQ(rename(next.c_str(), token_.c_str()), 0);
  ASSERT_TRUE(hooks_->Watch(IdOf(token_), token_).ok());
  ASSERT_TRUE(hooks_->Unwatch(old_id).ok());
  Run({"/bin/cat", token_});
  std::vector<tw_token_open> events = Drain(1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].file.ino, IdOf(token_).ino);
  // Unwatching the new one silences the path entirely.
  ASSERT_TRUE(hooks_->Unwatch(IdOf(token_)).ok());
  Run({"/bin/cat", token_});
  EXPECT_TRUE(Drain(1, absl::Milliseconds(500)).empty());
}

TEST_F(HookModeBpfTest, FanotifyQueueOverflowIsCounted) {
  // A tiny queue for groups created now; restored afterwards.
  const char* knob = "/proc/sys/fs/fanotify/max_queued_events";
  std::string saved;
  std::ifstream(knob) >> saved;
  ASSERT_FALSE(saved.empty());
  std::ofstream(knob) << "4";
  auto watcher = FanotifyWatcher::Create(0);
  std::ofstream(knob) << saved;
  ASSERT_TRUE(watcher.ok()) << watcher.status().message();
  // Opens of one file by one process merge into one event: use many files.
  for (int i = 0; i < 16; ++i) {
    std::string path = dir_ + "/file" + std::to_string(i);
    WriteFile(path);
    ASSERT_TRUE((*watcher)->Watch(path, IdOf(path)).ok());
    close(open(path.c_str(), O_RDONLY));
  }
  std::vector<FanotifyWatcher::Event> events;
  ASSERT_TRUE((*watcher)->Read(&events).ok());
  EXPECT_LE(events.size(), 4u);
  EXPECT_GE((*watcher)->overflows(), 1u);
}

// Both kinds of fanotify event name the same file: by handle (nothing is
// opened for the agent) where the kernel allows it, by fd otherwise.
class FanotifyEventsTest : public HookModeBpfTest, public ::testing::WithParamInterface<bool> {};

TEST_P(FanotifyEventsTest, AnOpenIsOneEventNamingTheFileAndTheOpener) {
  const bool by_handle = GetParam();
  // On tmpfs too: the kubelet's projected volumes are tmpfs.
  std::string tmpfs = dir_ + "/tmpfs";
  ASSERT_EQ(mkdir(tmpfs.c_str(), 0700), 0);
  ASSERT_EQ(mount("tmpfs", tmpfs.c_str(), "tmpfs", 0, "size=1m"), 0);
  std::string on_tmpfs = tmpfs + "/token";
  WriteFile(on_tmpfs);
  auto watcher = FanotifyWatcher::Create(FanotifyWatcher::Options{0, by_handle});
  ASSERT_TRUE(watcher.ok()) << watcher.status().message();
  for (const std::string& path : {token_, on_tmpfs}) {
    ASSERT_TRUE((*watcher)->Watch(path, IdOf(path)).ok());
  }
  EXPECT_EQ((*watcher)->watched(), 2u);
  if (by_handle) {
    // This kernel (6.x with tmpfs fsids) names both by handle.
    EXPECT_EQ((*watcher)->watched_by_handle(), 2u);
  } else {
    EXPECT_EQ((*watcher)->watched_by_handle(), 0u);
  }
  for (const std::string& path : {token_, on_tmpfs}) {
    Run({"/bin/cat", path});
    const uint32_t reader = last_child_;
    std::vector<FanotifyWatcher::Event> events;
    pollfd p{(*watcher)->fd(), POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 2000), 1) << "no event for " << path;
    ASSERT_TRUE((*watcher)->Read(&events).ok());
    ASSERT_EQ(events.size(), 1u) << path;
    EXPECT_EQ(events[0].tgid, reader);
    EXPECT_EQ(events[0].file.ino, IdOf(path).ino);
    EXPECT_EQ(events[0].file.dev, IdOf(path).dev);
  }
  // Unwatched, the file is silent.
  ASSERT_TRUE((*watcher)->Unwatch(IdOf(on_tmpfs)).ok());
  Run({"/bin/cat", on_tmpfs});
  std::vector<FanotifyWatcher::Event> events;
  ASSERT_TRUE((*watcher)->Read(&events).ok());
  EXPECT_TRUE(events.empty());
  watcher->reset();
  umount2(tmpfs.c_str(), MNT_DETACH);
}

INSTANTIATE_TEST_SUITE_P(ByHandleAndByFd, FanotifyEventsTest, ::testing::Bool());

class IoUringHookTest : public HookModeBpfTest,
                        public ::testing::WithParamInterface<std::tuple<const char*, bool>> {};

TEST_P(IoUringHookTest, AnIoUringOpenIsOneRecordMarkedIoUring) {
  auto [mode, direct] = GetParam();
  OpenHooks(mode);
  UringOpen(direct);
  std::vector<tw_token_open> events = Drain(1);
  ASSERT_EQ(events.size(), 1u) << "fanotify's own event must fold into the io_uring record";
  const tw_token_open& e = events[0];
  EXPECT_EQ(e.access, TW_ACCESS_IO_URING);
  EXPECT_EQ(e.syscall, TW_SYSCALL_IO_URING_OPENAT);
  EXPECT_EQ(e.tgid, static_cast<uint32_t>(getpid()));
  EXPECT_EQ(e.file.ino, IdOf(token_).ino);
  EXPECT_GE(e.n_ancestors, 1u);  // the lineage comes along
}

// A child that opens the token each time it is told to, and says when it has.
struct PacedReader {
  pid_t pid = -1;
  int command = -1;
  int done = -1;

  static PacedReader Start(const std::string& path) {
    int cmd[2], ack[2];
    EXPECT_EQ(pipe(cmd), 0);
    EXPECT_EQ(pipe(ack), 0);
    PacedReader r;
    r.pid = fork();
    if (r.pid == 0) {
      close(cmd[1]);  // or the parent's close would never reach us as EOF
      close(ack[0]);
      char c;
      while (read(cmd[0], &c, 1) == 1) {
        int fd = open(path.c_str(), O_RDONLY);
        if (fd >= 0) close(fd);
        if (write(ack[1], "k", 1) != 1) _exit(1);
      }
      _exit(0);
    }
    close(cmd[0]);
    close(ack[1]);
    r.command = cmd[1];
    r.done = ack[0];
    return r;
  }
  void Open() {
    char c;
    ASSERT_EQ(write(command, "o", 1), 1);
    ASSERT_EQ(read(done, &c, 1), 1);
  }
  void Stop() {
    close(command);
    close(done);
    int status = 0;
    waitpid(pid, &status, 0);
  }
};

uint64_t FoldedFor(TokenHooks* hooks, pid_t pid, uint64_t* entries = nullptr) {
  auto reopens = hooks->ReadReopens();
  EXPECT_TRUE(reopens.ok()) << reopens.status();
  uint64_t folded = 0;
  if (entries != nullptr) *entries = 0;
  for (const TokenOpenProbe::Reopen& r : *reopens) {
    if (r.key.proc.tgid != static_cast<uint32_t>(pid)) continue;
    folded = std::max<uint64_t>(folded, r.value.folded);
    if (entries != nullptr) ++*entries;
  }
  return folded;
}

class RereadHookTest : public HookModeBpfTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(RereadHookTest, RereadsByOneProcessAreOneRecordAndACount) {
  OpenHooks(GetParam(), absl::Minutes(10));
  PacedReader reader = PacedReader::Start(token_);
  // Each open read by the hooks before the next (fanotify would merge
  // identical queued events of one process, which would lose counts).
  std::vector<tw_token_open> records;
  for (int i = 0; i < 12; ++i) {
    reader.Open();
    for (const tw_token_open& e : Drain(i == 0 ? 1 : 0, absl::Milliseconds(100))) {
      if (e.tgid == static_cast<uint32_t>(reader.pid)) records.push_back(e);
    }
  }
  ASSERT_EQ(records.size(), 1u) << "12 opens by one process within the window";
  EXPECT_EQ(records[0].folded_before, 0u);
  EXPECT_EQ(FoldedFor(hooks_.get(), reader.pid), 11u);
  reader.Stop();
}

TEST_P(RereadHookTest, AReusedPidIsANewProcessWithARecordOfItsOwn) {
  // Forcing the kernel to hand out a pid again needs the initial pid
  // namespace's ns_last_pid (root).
  OpenHooks(GetParam(), absl::Minutes(10));
  PacedReader first = PacedReader::Start(token_);
  first.Open();
  pid_t pid = first.pid;
  ASSERT_EQ(Drain(1).size(), 1u);
  first.Open();  // folded
  first.Stop();
  Drain(0, absl::Milliseconds(100));
  PacedReader second;
  for (int attempt = 0; attempt < 20 && second.pid != pid; ++attempt) {
    if (second.pid > 0) second.Stop();
    std::ofstream("/proc/sys/kernel/ns_last_pid") << (pid - 1);
    second = PacedReader::Start(token_);
  }
  ASSERT_EQ(second.pid, pid) << "could not get pid " << pid << " again";
  second.Open();
  std::vector<tw_token_open> records = Drain(1);
  ASSERT_EQ(records.size(), 1u) << "the second process's open was folded into the first's";
  EXPECT_EQ(records[0].tgid, static_cast<uint32_t>(pid));
  EXPECT_EQ(records[0].folded_before, 0u);
  // Both processes keep their own counts: 1 folded for the first, 0 for the second.
  uint64_t entries = 0;
  FoldedFor(hooks_.get(), pid, &entries);
  EXPECT_GE(entries, 1u);
  second.Stop();
}

TEST_P(RereadHookTest, AnExitedReadersCountIsReportedOnceMoreThenForgotten) {
  OpenHooks(GetParam(), absl::Minutes(10));
  PacedReader reader = PacedReader::Start(token_);
  for (int i = 0; i < 3; ++i) {
    reader.Open();
    Drain(i == 0 ? 1 : 0, absl::Milliseconds(100));
  }
  const pid_t pid = reader.pid;
  uint64_t entries = 0;
  EXPECT_EQ(FoldedFor(hooks_.get(), pid, &entries), 2u);
  EXPECT_EQ(entries, 1u);
  reader.Stop();
  // Gone: its final count once more, then nothing is read back for it.
  EXPECT_EQ(FoldedFor(hooks_.get(), pid, &entries), 2u);
  EXPECT_EQ(entries, 1u);
  FoldedFor(hooks_.get(), pid, &entries);
  EXPECT_EQ(entries, 0u) << "an exited process's entry is still read back";
}

INSTANTIATE_TEST_SUITE_P(Modes, RereadHookTest, ::testing::Values("tracepoint", "fanotify"));

INSTANTIATE_TEST_SUITE_P(Modes, IoUringHookTest,
                         ::testing::Combine(::testing::Values("tracepoint", "fanotify"),
                                            ::testing::Bool()));

}  // namespace
}  // namespace tokenwatch::probes
