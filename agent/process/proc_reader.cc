#include "agent/process/proc_reader.h"

#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/ticks.h"
#include "agent/tokens/redact.h"

namespace tokenwatch::process {
namespace {

int64_t ClockNs(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": ", std::strerror(errno)));
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace

std::string ExecId(const std::string& node, const ProcessView& process) {
  return absl::StrCat(node, ":", StartTicks(process.start_boottime_ns), ":", process.pid);
}

BootClock::BootClock() {
  // Sample realtime between two boottime reads to halve the error.
  int64_t b1 = ClockNs(CLOCK_BOOTTIME);
  int64_t r = ClockNs(CLOCK_REALTIME);
  int64_t b2 = ClockNs(CLOCK_BOOTTIME);
  offset_ns_ = r - (b1 + (b2 - b1) / 2);
}

absl::Time BootClock::ToTime(uint64_t boottime_ns) const {
  return absl::FromUnixNanos(static_cast<int64_t>(boottime_ns) + offset_ns_);
}

uint64_t BootClock::NowBoottimeNs() const {
  return static_cast<uint64_t>(ClockNs(CLOCK_BOOTTIME));
}

absl::StatusOr<ProcReader::Stat> ProcReader::ReadStat(uint32_t pid) const {
  auto text = ReadFile(absl::StrCat(proc_root_, "/", pid, "/stat"));
  if (!text.ok()) return text.status();
  // comm is in parentheses and may itself hold ") ": split at the last one.
  size_t open = text->find('(');
  size_t close = text->rfind(')');
  if (open == std::string::npos || close == std::string::npos || close < open) {
    return absl::DataLossError(absl::StrCat("malformed ", proc_root_, "/", pid, "/stat"));
  }
  Stat stat;
  stat.comm = text->substr(open + 1, close - open - 1);
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(*text).substr(close + 2), ' ', absl::SkipEmpty());
  // Fields after comm start at field 3 (state); ppid is field 4, starttime 22.
  if (fields.size() < 20) {
    return absl::DataLossError(absl::StrCat("short ", proc_root_, "/", pid, "/stat"));
  }
  uint64_t ticks = 0;
  if (!absl::SimpleAtoi(fields[1], &stat.ppid) || !absl::SimpleAtoi(fields[19], &ticks)) {
    return absl::DataLossError(absl::StrCat("malformed ", proc_root_, "/", pid, "/stat"));
  }
  stat.start_boottime_ns = ticks * NsPerTick();
  return stat;
}

absl::StatusOr<std::string> ProcReader::ReadExe(uint32_t pid) const {
  std::string link = absl::StrCat(proc_root_, "/", pid, "/exe");
  char buf[PATH_MAX];
  ssize_t n = readlink(link.c_str(), buf, sizeof(buf) - 1);
  if (n < 0) return absl::NotFoundError(absl::StrCat(link, ": ", std::strerror(errno)));
  absl::string_view exe(buf, static_cast<size_t>(n));
  // A binary replaced on disk while running reads "path (deleted)".
  absl::ConsumeSuffix(&exe, " (deleted)");
  return std::string(exe);
}

absl::StatusOr<std::vector<std::string>> ProcReader::ReadArgv(uint32_t pid) const {
  auto text = ReadFile(absl::StrCat(proc_root_, "/", pid, "/cmdline"));
  if (!text.ok()) return text.status();
  return SplitArgv(*text);
}

absl::StatusOr<std::pair<uint32_t, uint32_t>> ProcReader::ReadIds(uint32_t pid) const {
  auto text = ReadFile(absl::StrCat(proc_root_, "/", pid, "/status"));
  if (!text.ok()) return text.status();
  uint32_t uid = 0, gid = 0;
  bool have_uid = false, have_gid = false;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::ByAnyChar("\t "), absl::SkipEmpty());
    if (f.size() < 2) continue;
    if (f[0] == "Uid:") have_uid = absl::SimpleAtoi(f[1], &uid);
    if (f[0] == "Gid:") have_gid = absl::SimpleAtoi(f[1], &gid);
  }
  if (!have_uid || !have_gid) return absl::DataLossError("no Uid/Gid in status");
  return std::make_pair(uid, gid);
}

absl::StatusOr<uint32_t> ProcReader::ReadInnermostPid(uint32_t pid) const {
  auto text = ReadFile(absl::StrCat(proc_root_, "/", pid, "/status"));
  if (!text.ok()) return text.status();
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    if (!absl::ConsumePrefix(&line, "NSpid:")) continue;
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::ByAnyChar("\t "), absl::SkipEmpty());
    uint32_t inner = 0;
    if (!f.empty() && absl::SimpleAtoi(f.back(), &inner)) return inner;
  }
  return absl::DataLossError("no NSpid in status");
}

absl::StatusOr<std::string> ProcReader::ReadCgroupV2(uint32_t pid) const {
  auto text = ReadFile(absl::StrCat(proc_root_, "/", pid, "/cgroup"));
  if (!text.ok()) return text.status();
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    if (absl::ConsumePrefix(&line, "0::")) return std::string(line);
  }
  return absl::NotFoundError("no cgroup v2 entry");
}

std::string EntrypointResolver::EntrypointExe(const std::string& cgroup_path) {
  {
    absl::MutexLock lock(&mu_);
    auto it = cache_.find(cgroup_path);
    if (it != cache_.end()) return it->second;
  }
  auto procs = ReadFile(absl::StrCat(mount_, cgroup_path, "/cgroup.procs"));
  if (!procs.ok()) return "";
  std::string exe;
  for (absl::string_view line : absl::StrSplit(*procs, '\n', absl::SkipEmpty())) {
    uint32_t pid = 0;
    if (!absl::SimpleAtoi(line, &pid)) continue;
    auto inner = proc_->ReadInnermostPid(pid);
    if (!inner.ok() || *inner != 1) continue;
    auto path = proc_->ReadExe(pid);
    if (path.ok()) exe = *path;
    break;
  }
  // Only a found entrypoint is cached: a container that is still starting
  // gets asked again.
  if (!exe.empty()) {
    absl::MutexLock lock(&mu_);
    cache_[cgroup_path] = exe;
  }
  return exe;
}

std::vector<std::string> SplitArgv(absl::string_view block, bool cut) {
  // A JWT cut off by the end of a truncated block no longer looks like a JWT
  // but is still a secret: drop a trailing "eyJ..." run entirely.
  if (cut) {
    auto in_jwt = [](char c) {
      return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ||
             c == '.';
    };
    size_t start = block.size();
    while (start > 0 && in_jwt(block[start - 1])) --start;
    if (absl::StartsWith(block.substr(start), "eyJ")) {
      std::vector<std::string> argv = SplitArgv(block.substr(0, start), false);
      if (argv.empty() || start == 0 || block[start - 1] == '\0') argv.emplace_back();
      argv.back() += std::string(tokens::kRedactedJwt);
      return argv;
    }
  }
  while (!block.empty() && block.back() == '\0') block.remove_suffix(1);
  std::vector<std::string> argv;
  if (block.empty()) return argv;
  // Bounded so that one finding stays small whatever a process was given.
  constexpr size_t kMaxArgs = 64;
  constexpr size_t kMaxArgBytes = 1024;
  for (absl::string_view arg : absl::StrSplit(block, '\0')) {
    if (argv.size() == kMaxArgs) {
      argv.push_back("<more arguments cut>");
      break;
    }
    std::string redacted = tokens::RedactJwts(arg);
    if (redacted.size() > kMaxArgBytes) {
      redacted.resize(kMaxArgBytes);
      redacted += "<cut>";
    }
    argv.push_back(std::move(redacted));
  }
  return argv;
}

}  // namespace tokenwatch::process
