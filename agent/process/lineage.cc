#include "agent/process/lineage.h"

#include <cstring>

#include "absl/strings/string_view.h"

namespace tokenwatch::process {
namespace {

std::string CString(const char* data, size_t max) {
  return std::string(data, strnlen(data, max));
}

}  // namespace

void LineageBuilder::Attribute(ProcessView* view, std::string cgroup) const {
  view->cgroup = std::move(cgroup);
  view->container = k8s::ParseCgroupPath(view->cgroup);
}

std::optional<ProcessView> LineageBuilder::FromProc(uint32_t pid) const {
  auto stat = proc_->ReadStat(pid);
  if (!stat.ok()) return std::nullopt;
  ProcessView view;
  view.pid = pid;
  view.ppid = stat->ppid;
  view.comm = stat->comm;
  view.start_boottime_ns = stat->start_boottime_ns;
  view.start_time = clock_->ToTime(stat->start_boottime_ns);
  if (auto exe = proc_->ReadExe(pid); exe.ok()) view.exe = *exe;
  if (auto argv = proc_->ReadArgv(pid); argv.ok()) view.argv = *std::move(argv);
  if (auto ids = proc_->ReadIds(pid); ids.ok()) std::tie(view.uid, view.gid) = *ids;
  if (auto cg = proc_->ReadCgroupV2(pid); cg.ok()) Attribute(&view, *cg);
  return view;
}

Lineage LineageBuilder::FromTokenOpen(const tw_token_open& event) const {
  Lineage lineage;
  ProcessView& reader = lineage.process;
  reader.pid = event.tgid;
  reader.ppid = event.ppid;
  reader.uid = event.uid;
  reader.gid = event.gid;
  reader.start_boottime_ns = event.start_boottime_ns;
  reader.start_time = clock_->ToTime(event.start_boottime_ns);
  reader.comm = CString(event.comm, sizeof(event.comm));
  size_t argv_len = std::min<size_t>(event.argv_len, sizeof(event.argv));
  reader.argv = SplitArgv(absl::string_view(event.argv, argv_len), argv_len == sizeof(event.argv));
  std::optional<std::string> cgroup = cgroups_->PathOf(event.cgroup_id);
  Attribute(&reader, cgroup.value_or(""));

  // The exe path from /proc only if the pid still names the same process;
  // otherwise the kernel-captured binary name stands.
  reader.exe = CString(event.exe_name, sizeof(event.exe_name));
  if (auto stat = proc_->ReadStat(event.tgid);
      stat.ok() && stat->start_boottime_ns / 10000000 == event.start_boottime_ns / 10000000) {
    if (auto exe = proc_->ReadExe(event.tgid); exe.ok()) reader.exe = *exe;
  }

  uint32_t next = event.ppid;
  while (next > 0) {
    if (lineage.ancestors.size() >= options_.max_depth) {
      lineage.truncated = true;
      break;
    }
    std::optional<ProcessView> parent = FromProc(next);
    if (!parent.has_value()) break;
    next = parent->ppid;
    lineage.ancestors.push_back(*std::move(parent));
  }
  return lineage;
}

}  // namespace tokenwatch::process
