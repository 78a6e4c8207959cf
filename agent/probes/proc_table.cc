#include "agent/probes/proc_table.h"

#include <bpf/bpf.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/probes/process_probe.h"

namespace tokenwatch::probes {

std::optional<ProcStatFields> ReadProcStat(const std::string& proc_root, uint32_t pid) {
  std::ifstream in(absl::StrCat(proc_root, "/", pid, "/stat"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  // comm may hold spaces and parentheses: the fields start after the last ')'.
  size_t open = text.find('(');
  size_t close = text.rfind(')');
  if (!in || open == std::string::npos || close == std::string::npos || close < open) {
    return std::nullopt;
  }
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(text).substr(close + 2), ' ', absl::SkipEmpty());
  // fields[0] is field 3 (state): ppid is field 4, starttime field 22.
  ProcStatFields out;
  out.comm = text.substr(open + 1, close - open - 1);
  if (fields.size() < 20 || !absl::SimpleAtoi(fields[1], &out.ppid) ||
      !absl::SimpleAtoi(fields[19], &out.start_ticks)) {
    return std::nullopt;
  }
  return out;
}

std::optional<tw_proc> ProcTableReader::Lookup(const tw_proc_key& key) const {
  tw_proc value;
  for (int fd : {procs_fd_, exited_fd_}) {
    if (fd >= 0 && bpf_map_lookup_elem(fd, &key, &value) == 0) return value;
  }
  return std::nullopt;
}

std::optional<tw_proc> ProcTableReader::FindByTgid(uint32_t tgid) const {
  if (auto stat = ReadProcStat(proc_root_, tgid); stat.has_value()) {
    tw_proc_key key{tgid, 0, stat->start_ticks};
    if (auto entry = Lookup(key); entry.has_value()) return entry;
  }
  // Gone already (the usual case for a short `cat`), or it exited between
  // the stat and the lookup: the exited table is keyed by (tgid, start), so
  // walk it for the tgid and take the latest exit. A walk costs one bpf(2)
  // per entry, and runs only for readers that are gone.
  if (exited_fd_ < 0) return std::nullopt;
  std::optional<tw_proc> best;
  tw_proc_key key{};
  tw_proc_key next{};
  const void* prev = nullptr;
  while (bpf_map_get_next_key(exited_fd_, prev, &next) == 0) {
    key = next;
    prev = &key;
    if (key.tgid != tgid || key.image != 0) continue;
    tw_proc value;
    if (bpf_map_lookup_elem(exited_fd_, &key, &value) != 0) continue;
    if (!best.has_value() || value.exit_ns > best->exit_ns) best = value;
  }
  return best;
}

tw_token_open ProcTableReader::BuildRecord(uint32_t tgid, const tw_file_id& file, uint64_t ts_ns,
                                           uint32_t max_depth, uint16_t hook) const {
  tw_token_open e;
  std::memset(&e, 0, sizeof(e));
  e.hdr.type = TW_EVENT_TOKEN_OPEN;
  e.hdr.ts_ns = ts_ns;
  e.tgid = tgid;
  e.pid = tgid;  // fanotify names the thread group, not the thread
  e.syscall = TW_SYSCALL_UNKNOWN;
  e.access = TW_ACCESS_UNKNOWN;
  e.hook = hook;
  e.file = file;

  if (std::optional<tw_proc> reader = FindByTgid(tgid); reader.has_value()) {
    e.reader = *reader;
    e.reader_known = 1;
  } else if (auto stat = ReadProcStat(proc_root_, tgid); stat.has_value()) {
    // Not in the table (evicted): what /proc still says. The exe is marked
    // cut so the lineage builder takes it from /proc/<pid>/exe.
    e.reader.key = tw_proc_key{tgid, 0, stat->start_ticks};
    e.reader.start_boottime_ns = stat->start_ticks * NsPerTick();
    e.reader.flags = TW_PROC_EXE_CUT;
    std::strncpy(e.reader.comm, stat->comm.c_str(), sizeof(e.reader.comm) - 1);
    if (auto parent = ReadProcStat(proc_root_, stat->ppid); parent.has_value()) {
      e.reader.parent = tw_proc_key{stat->ppid, 0, parent->start_ticks};
    }
  } else {
    e.reader.key.tgid = tgid;
  }
  e.cgroup_id = e.reader.cgroup_id;

  // The ancestors, following the parents recorded at fork, as the kernel does.
  uint32_t depth = max_depth < TW_MAX_ANCESTORS ? max_depth : TW_MAX_ANCESTORS;
  tw_proc_key key = e.reader.parent;
  uint32_t n = 0;
  while (n < depth && key.tgid != 0) {
    std::optional<tw_proc> parent = Lookup(key);
    if (!parent.has_value()) break;
    e.ancestors[n++] = *parent;
    key = parent->parent;
  }
  e.n_ancestors = n;
  e.truncated = (n >= depth && key.tgid != 0) ? 1 : 0;
  e.hdr.size = static_cast<uint32_t>(TW_TOKEN_OPEN_FIXED_SIZE + n * sizeof(tw_proc));
  return e;
}

}  // namespace tokenwatch::probes
