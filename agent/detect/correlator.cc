#include "agent/detect/correlator.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/ticks.h"
#include "agent/detect/finding_builder.h"

namespace tokenwatch::detect {
namespace {

std::string Who(const process::ProcessView& p) {
  std::string name = p.argv.empty() ? p.comm : p.argv[0];
  return absl::StrFormat("%s (pid %d, %s)", name, p.pid, p.exe);
}

std::string PodOf(const tokens::TokenInfo& token) {
  return absl::StrCat(token.claims.namespace_name, "/", token.claims.pod_name);
}

}  // namespace

bool SameCgroup(const process::ProcessView& a, const process::ProcessView& b) {
  if (a.cgroup_id != 0 && b.cgroup_id != 0) return a.cgroup_id == b.cgroup_id;
  return !a.cgroup.empty() && a.cgroup == b.cgroup;
}

ProcKey KeyOf(const process::ProcessView& p) {
  return {p.pid, StartTicks(p.start_boottime_ns)};
}

Correlator::Taint Correlator::OnTokenRead(const TokenRead& read) {
  Taint taint;
  taint.read_id = next_read_id_++;
  taint.expires = read.time + options_.window;
  const process::ProcessView& reader = read.lineage.process;
  taint.cgroup_id = reader.cgroup_id;
  taint.keys.push_back(KeyOf(reader));
  // Up the chain while inside the reader's container and short of its init:
  // the shell that ran `T=$(cat token)` is tainted, the entrypoint is not
  // (that would taint everything the container ever starts).
  size_t host_budget = 1;
  for (const process::ProcessView& a : read.lineage.ancestors) {
    // The program the reader (or an ancestor) ran before it exec'd is the
    // same process, already tainted: `sh -c 'exec cat token'` taints cat
    // and sh's parent, as `sh -c 'cat token'` does.
    if (KeyOf(a) == taint.keys.back()) continue;
    // Never past the reader's cgroup: a container process's parent on the
    // host, or a host reader's parent in another cgroup.
    if (!SameCgroup(reader, a)) break;
    if (reader.container.has_value()) {
      bool same = reader.pidns != 0 ? a.pidns == reader.pidns
                                    : a.container.has_value() &&
                                          a.container->container_id ==
                                              reader.container->container_id;
      if (!same || a.ns_pid == 1) break;
    } else {
      if (host_budget-- == 0 || a.ns_pid == 1) break;
    }
    taint.keys.push_back(KeyOf(a));
  }
  reads_[taint.read_id] = Read{read, taint.expires};
  for (const ProcKey& k : taint.keys) tainted_[k] = taint.read_id;
  return taint;
}

uint64_t Correlator::TaintedBy(const process::ProcessView& p,
                               const process::ProcessView& connector, absl::Time at) const {
  auto it = tainted_.find(KeyOf(p));
  if (it == tainted_.end()) return 0;
  auto r = reads_.find(it->second);
  if (r == reads_.end()) return 0;
  if (!SameCgroup(r->second.read.lineage.process, connector)) return 0;
  // Looking back: a connection up to one window before the read counts.
  if (at > r->second.expires || at < r->second.read.time - options_.window) return 0;
  return it->second;
}

const Correlator::Read* Correlator::SourceOf(const Connection& c, uint64_t kernel_read_id,
                                             uint64_t* read_id) const {
  if (kernel_read_id != 0) {
    // The kernel checked the cgroup for its own reports; a look-back's
    // candidate is checked here.
    auto it = reads_.find(kernel_read_id);
    if (it != reads_.end() && SameCgroup(it->second.read.lineage.process, c.lineage.process)) {
      *read_id = kernel_read_id;
      return &it->second;
    }
  }
  // The connector or any ancestor (a child or sibling of the reader).
  std::vector<const process::ProcessView*> chain = {&c.lineage.process};
  for (const process::ProcessView& a : c.lineage.ancestors) chain.push_back(&a);
  for (const process::ProcessView* p : chain) {
    if (uint64_t id = TaintedBy(*p, c.lineage.process, c.time); id != 0) {
      *read_id = id;
      return &reads_.at(id);
    }
  }
  return nullptr;
}

v1::Finding Correlator::Build(const Connection& c, const Read* source, const std::string& rule_id,
                              const std::string& rule_name, v1::Severity severity,
                              const std::string& summary) const {
  v1::Finding f;
  f.set_id(NewUuid());
  f.set_node(options_.node);
  *f.mutable_time() = ToTimestamp(c.time);
  *f.mutable_last_seen() = ToTimestamp(c.time);
  f.set_count(1);
  f.set_rule_id(rule_id);
  f.set_rule_name(rule_name);
  f.set_severity(severity);
  f.set_summary(summary);
  f.add_mitre("T1528");
  if (c.target == v1::TARGET_KIND_METADATA) f.add_mitre("T1552.005");
  const tokens::TokenInfo* token = source != nullptr ? &source->read.token : nullptr;
  FillProcess(options_.node, c.lineage.process, token, f.mutable_process());
  for (const process::ProcessView& a : c.lineage.ancestors) {
    FillProcess(options_.node, a, token, f.add_ancestors());
  }
  f.set_ancestors_truncated(c.lineage.truncated);
  if (source != nullptr) {
    FillToken(source->read.token, f.mutable_token());
    FillProcess(options_.node, source->read.lineage.process, token, f.mutable_reader());
    v1::Access* access = f.mutable_access();
    access->set_path(source->read.io_uring ? v1::ACCESS_PATH_IO_URING : v1::ACCESS_PATH_SYSCALL);
    access->set_syscall(source->read.syscall);
    access->set_flags(source->read.flags);
    access->set_flags_text(OpenFlagsText(source->read.flags));
    *access->mutable_time() = ToTimestamp(source->read.time);
  }
  v1::Connection* conn = f.add_connections();
  conn->set_address(c.dest.text.substr(0, c.dest.text.rfind(':')));
  conn->set_port(c.dest.port);
  conn->set_target(c.target);
  *conn->mutable_time() = ToTimestamp(c.time);
  conn->set_pid(c.lineage.process.pid);
  f.set_hook_mode(options_.hook_mode);
  return f;
}

std::vector<v1::Finding> Correlator::OnConnection(const Connection& c, uint64_t kernel_read_id) {
  const process::ProcessView& p = c.lineage.process;
  // The same connection can arrive twice (the kernel's report and a look-back).
  std::string seen_key = absl::StrCat(p.pid, ":", KeyOf(p).second, ":", c.dest.text, ":",
                                      absl::ToUnixNanos(c.time));
  if (!seen_.insert(seen_key).second) return {};

  uint64_t read_id = 0;
  const Read* source = SourceOf(c, kernel_read_id, &read_id);
  std::string rule_id, rule_name, summary, fold_key;
  v1::Severity severity = v1::SEVERITY_UNSPECIFIED;
  std::vector<std::string> reasons;  // Finding.severity_reasons
  std::string token_text =
      source != nullptr
          ? absl::StrCat("the service-account token of pod ", PodOf(source->read.token),
                         " (service account ", source->read.token.claims.service_account,
                         "), read by ", Who(source->read.lineage.process))
          : "";
  if (source != nullptr && c.target == v1::TARGET_KIND_APISERVER) {
    rule_id = "TW010";
    rule_name = "token-used-apiserver";
    severity = v1::SEVERITY_CRITICAL;
    summary = absl::StrCat(Who(p), " connected to the API server at ", c.dest.text, " after ",
                           token_text, ".");
  } else if (c.target == v1::TARGET_KIND_METADATA && p.container.has_value()) {
    rule_id = "TW021";
    rule_name = "metadata-service-contact";
    severity = source != nullptr ? v1::SEVERITY_HIGH : v1::SEVERITY_MEDIUM;
    if (source != nullptr) reasons.push_back("the connecting process read a token first");
    summary = absl::StrCat(Who(p), " in a container connected to the cloud metadata service at ",
                           c.dest.text,
                           source != nullptr ? absl::StrCat(" after ", token_text) : "", ".");
  } else if (source == nullptr && c.target == v1::TARGET_KIND_APISERVER &&
             p.container.has_value() && options_.apiserver_contact_expected &&
             !options_.apiserver_contact_expected(p)) {
    rule_id = "TW020";
    rule_name = "apiserver-contact-unexpected";
    severity = v1::SEVERITY_MEDIUM;
    summary = absl::StrCat(Who(p), " in pod ",
                           p.pod_name.empty() ? p.container->pod_uid
                                              : absl::StrCat(p.pod_namespace, "/", p.pod_name),
                           " connected to the API server at ", c.dest.text,
                           "; neither the policy nor the learned baseline expects its workload "
                           "to.");
  } else if (source != nullptr && c.target == v1::TARGET_KIND_OTHER && !InCluster(c.dest)) {
    rule_id = "TW011";
    rule_name = "token-egress";
    severity = v1::SEVERITY_HIGH;
    summary = absl::StrCat(Who(p), " connected to ", c.dest.text, " outside the cluster after ",
                           token_text, ".");
  } else {
    return {};
  }
  // Every use, a folded one too: a second reader whose use folds into the
  // first one's TW010 still has its own read finding to raise.
  if (source != nullptr && (rule_id == "TW010" || rule_id == "TW011") &&
      options_.on_token_used) {
    options_.on_token_used(rule_id, source->read);
  }
  // Fold by (rule, connecting pod, executable, token), as token reads fold:
  // 2,000 short-lived `cat | nc` pipelines in one session are one finding
  // counting 2,000, not 2,000 findings. Untainted contacts fold per pod and
  // executable.
  const std::string pod_exe =
      absl::StrCat(rule_id, "/", p.container ? p.container->pod_uid : "host", "/", p.exe);
  if (source != nullptr) {
    const tokens::TokenInfo& t = source->read.token;
    fold_key = absl::StrCat(pod_exe, "/", t.pod_uid, "/", t.volume, "/", t.file_name, "/",
                            t.pod_uid.empty() ? t.host_path : "");
  } else {
    fold_key = pod_exe;
  }
  if (Fold* fold = OpenFold(fold_key, c.time); fold != nullptr) {
    Grow(fold, c.time);
    if (static_cast<size_t>(fold->finding.connections_size()) <
        options_.max_connections_per_finding) {
      v1::Finding one = Build(c, source, rule_id, rule_name, severity, summary);
      *fold->finding.add_connections() = one.connections(0);
    }
    return {};
  }
  v1::Finding f = Build(c, source, rule_id, rule_name, severity, summary);
  for (std::string& reason : reasons) f.add_severity_reasons(std::move(reason));
  folds_[fold_key] = Fold{f, c.time, false};
  return {f};
}

Correlator::Fold* Correlator::OpenFold(const std::string& key, absl::Time at) {
  auto it = folds_.find(key);
  if (it == folds_.end()) return nullptr;
  if (at - it->second.first < options_.window) return &it->second;
  if (it->second.dirty) closed_.push_back(std::move(it->second.finding));
  folds_.erase(it);
  return nullptr;
}

void Correlator::Grow(Fold* fold, absl::Time at) {
  fold->finding.set_count(fold->finding.count() + 1);
  if (at > FromTimestamp(fold->finding.last_seen())) {
    *fold->finding.mutable_last_seen() = ToTimestamp(at);
  }
  fold->dirty = true;
}

std::vector<v1::Finding> Correlator::OnArgvToken(absl::Time time, const tokens::TokenInfo& token,
                                                 const process::Lineage& lineage) {
  // A script that passes the token to curl every minute is one finding a
  // window. A pod's token is named by its volume and file, so the fold
  // survives rotation; a configured path has only its path.
  const process::ProcessView& p = lineage.process;
  std::string token_key =
      token.pod_uid.empty()
          ? token.host_path
          : absl::StrCat(token.pod_uid, "\x1f", token.volume, "\x1f", token.file_name);
  std::string fold_key = absl::StrCat("TW012\x1f", p.container ? p.container->pod_uid : "host",
                                      "\x1f", p.exe, "\x1f", token_key);
  if (Fold* fold = OpenFold(fold_key, time); fold != nullptr) {
    Grow(fold, time);
    return {};
  }
  v1::Finding f;
  f.set_id(NewUuid());
  f.set_node(options_.node);
  *f.mutable_time() = ToTimestamp(time);
  *f.mutable_last_seen() = ToTimestamp(time);
  f.set_count(1);
  f.set_rule_id("TW012");
  f.set_rule_name("token-in-argv");
  f.set_severity(v1::SEVERITY_HIGH);
  f.set_summary(absl::StrCat(Who(lineage.process),
                             " was started with the service-account token of pod ",
                             PodOf(token), " (service account ", token.claims.service_account,
                             ") on its command line (shown redacted)."));
  f.add_mitre("T1528");
  FillToken(token, f.mutable_token());
  FillProcess(options_.node, lineage.process, &token, f.mutable_process());
  for (const process::ProcessView& a : lineage.ancestors) {
    FillProcess(options_.node, a, &token, f.add_ancestors());
  }
  f.set_ancestors_truncated(lineage.truncated);
  f.set_hook_mode(options_.hook_mode);
  folds_[fold_key] = Fold{f, time, false};
  return {f};
}

std::vector<v1::Finding> Correlator::Flush(absl::Time now) {
  std::vector<v1::Finding> out = std::move(closed_);
  closed_.clear();
  for (auto it = folds_.begin(); it != folds_.end();) {
    if (now - it->second.first >= options_.window) {
      if (it->second.dirty) out.push_back(std::move(it->second.finding));
      folds_.erase(it++);
    } else {
      ++it;
    }
  }
  for (auto it = reads_.begin(); it != reads_.end();) {
    if (now > it->second.expires) {
      it = reads_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = tainted_.begin(); it != tainted_.end();) {
    if (reads_.count(it->second) == 0) {
      it = tainted_.erase(it);
    } else {
      ++it;
    }
  }
  if (seen_.size() > 100000) seen_.clear();
  return out;
}

std::vector<v1::Finding> Correlator::FlushAll() {
  std::vector<v1::Finding> out = std::move(closed_);
  closed_.clear();
  for (auto& [key, fold] : folds_) {
    if (!fold.dirty) continue;
    out.push_back(fold.finding);
    fold.dirty = false;
  }
  return out;
}

}  // namespace tokenwatch::detect
