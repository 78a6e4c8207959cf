#include "agent/process/lineage.h"

#include <sys/stat.h>

#include <cstring>

#include "absl/strings/string_view.h"
#include "common/ticks.h"

namespace tokenwatch::process {
namespace {

std::string CString(const char* data, size_t max) {
  return std::string(data, strnlen(data, max));
}

bool SameContainer(const ProcessView& a, const ProcessView& b) {
  if (a.pidns != 0 && b.pidns != 0) return a.pidns == b.pidns;
  return a.container.has_value() && b.container.has_value() &&
         a.container->container_id == b.container->container_id;
}

}  // namespace

void LineageBuilder::Attribute(ProcessView* view, std::string cgroup) const {
  view->cgroup = std::move(cgroup);
  view->container = k8s::ParseCgroupPath(view->cgroup);
}

uint64_t LineageBuilder::CgroupIdOf(const std::string& path) const {
  struct stat st;
  if (path.empty() || cgroups_->mount().empty() ||
      stat((cgroups_->mount() + path).c_str(), &st) != 0) {
    return 0;
  }
  return st.st_ino;
}

ProcessView LineageBuilder::FromEntry(const tw_proc& e) const {
  ProcessView view;
  view.pid = e.key.tgid;
  view.ppid = e.parent.tgid;
  view.uid = e.uid;
  view.gid = e.gid;
  view.start_boottime_ns = e.start_boottime_ns;
  view.start_time = clock_->ToTime(e.start_boottime_ns);
  view.comm = CString(e.comm, sizeof(e.comm));
  view.exe = CString(e.exe, std::min<size_t>(e.exe_len + 1, sizeof(e.exe)));
  size_t argv_len = std::min<size_t>(e.argv_len, sizeof(e.argv));
  view.argv = SplitArgv(absl::string_view(e.argv, argv_len), argv_len == sizeof(e.argv));
  view.ns_pid = e.ns_pid;
  view.pidns = e.pidns;
  view.exited = (e.flags & TW_PROC_EXITED) != 0;
  view.cgroup_id = e.cgroup_id;
  Attribute(&view, cgroups_->PathOf(e.cgroup_id).value_or(""));
  // A relative or cut exe: take the full path from /proc if the pid still
  // names the same process.
  if ((e.flags & TW_PROC_EXE_CUT) != 0 && !view.exited) {
    if (auto stat = proc_->ReadStat(view.pid);
        stat.ok() && StartTicks(stat->start_boottime_ns) == StartTicks(e.start_boottime_ns)) {
      if (auto exe = proc_->ReadExe(view.pid); exe.ok()) view.exe = *exe;
    }
  }
  if (view.exe.empty()) view.exe = view.comm;
  return view;
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
  if (auto inner = proc_->ReadInnermostPid(pid); inner.ok()) view.ns_pid = *inner;
  if (auto cg = proc_->ReadCgroupV2(pid); cg.ok()) {
    Attribute(&view, *cg);
    view.cgroup_id = CgroupIdOf(view.cgroup);
  }
  return view;
}

Lineage LineageBuilder::FromTokenOpen(const tw_token_open& event) const {
  return FromRecord(event.tgid, event.cgroup_id, event.reader, event.ancestors,
                    event.n_ancestors, event.truncated != 0);
}

Lineage LineageBuilder::FromRecord(uint32_t tgid, uint64_t cgroup_id, const tw_proc& actor,
                                   const tw_proc* ancestors, uint32_t n_ancestors,
                                   bool truncated) const {
  Lineage lineage;
  lineage.process = FromEntry(actor);
  // The cgroup at the moment of the event, not at exec.
  Attribute(&lineage.process, cgroups_->PathOf(cgroup_id).value_or(""));
  if (cgroup_id != 0) lineage.process.cgroup_id = cgroup_id;
  lineage.process.pid = tgid;

  size_t n = std::min<size_t>(n_ancestors, TW_MAX_ANCESTORS);
  for (size_t i = 0; i < n && i < options_.max_depth; ++i) {
    lineage.ancestors.push_back(FromEntry(ancestors[i]));
  }
  lineage.truncated = truncated;

  // The kernel keeps the image an exec replaced as the new image's parent,
  // under the same pid and start: such a pair is one process, the newer
  // entry from_exec, and it takes the parent pid its previous image had
  // (from the top down, so a run of execs all get it).
  for (size_t i = lineage.ancestors.size(); i-- > 0;) {
    ProcessView& image = i == 0 ? lineage.process : lineage.ancestors[i - 1];
    const ProcessView& before = lineage.ancestors[i];
    image.from_exec = before.pid == image.pid &&
                      StartTicks(before.start_boottime_ns) == StartTicks(image.start_boottime_ns);
    if (image.from_exec) image.ppid = before.ppid;
  }

  // Where the kernel's chain stopped short of the top, continue from /proc.
  // A chain cut right after an exec ends on an image whose previous one was
  // evicted: its parent is still itself, and /proc would show the same
  // process again, so take the parent from /proc's ppid.
  ProcessView& last = lineage.ancestors.empty() ? lineage.process : lineage.ancestors.back();
  uint32_t next = last.ppid;
  if (next == last.pid) {
    auto stat = proc_->ReadStat(last.pid);
    next = stat.ok() && StartTicks(stat->start_boottime_ns) == StartTicks(last.start_boottime_ns)
               ? stat->ppid
               : 0;
    last.ppid = next;
  }
  while (!lineage.truncated && next > 0) {
    if (lineage.ancestors.size() >= options_.max_depth) {
      lineage.truncated = true;
      break;
    }
    std::optional<ProcessView> parent = FromProc(next);
    if (!parent.has_value()) break;
    // A pid reused since: a process younger than its child is not its parent.
    const ProcessView& child = lineage.ancestors.empty() ? lineage.process : lineage.ancestors.back();
    if (parent->start_boottime_ns > child.start_boottime_ns && child.start_boottime_ns != 0) break;
    next = parent->ppid;
    lineage.ancestors.push_back(*std::move(parent));
  }
  MarkExecSession(&lineage);
  return lineage;
}

void MarkExecSession(Lineage* lineage) {
  ProcessView& reader = lineage->process;
  if (!reader.container.has_value()) return;
  // The reader's run of ancestors inside its container, and whether the
  // chain was seen leaving it (else we cannot tell where it started).
  std::vector<ProcessView*> run = {&reader};
  bool left_container = false;
  for (ProcessView& ancestor : lineage->ancestors) {
    if (!SameContainer(reader, ancestor)) {
      left_container = true;
      break;
    }
    run.push_back(&ancestor);
  }
  if (!left_container || run.back()->ns_pid == 0) return;
  bool from_init = run.back()->ns_pid == 1;
  for (ProcessView* p : run) p->exec_session = !from_init;
}

}  // namespace tokenwatch::process
