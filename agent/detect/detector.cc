#include "agent/detect/detector.h"

#include <iterator>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/detect/finding_builder.h"

namespace tokenwatch::detect {
namespace {

absl::string_view Basename(absl::string_view path) {
  size_t slash = path.rfind('/');
  return slash == absl::string_view::npos ? path : path.substr(slash + 1);
}

std::string PodName(const tokens::TokenInfo& token) {
  return absl::StrCat(token.claims.namespace_name, "/", token.claims.pod_name);
}

// "exe (pid N, name)": the name is what the process calls itself, argv[0]'s
// basename (busybox applets share one exe; a /proc/self/exe re-exec leaves
// comm "exe"), else comm.
std::string Actor(const process::ProcessView& p) {
  std::string name = p.comm;
  if (!p.argv.empty() && !p.argv[0].empty()) name = std::string(Basename(p.argv[0]));
  return absl::StrFormat("%s (pid %d, %s)", p.exe.empty() ? p.comm : p.exe, p.pid, name);
}

}  // namespace

void RaiseForContext(const std::string& rule_id, const TokenRead& read, bool tool,
                     v1::Severity* severity, std::vector<std::string>* reasons) {
  // Listed even when the severity already is that high: the analyst reads
  // why, not by how much.
  auto raise = [&](v1::Severity to, std::string reason) {
    if (*severity < to) *severity = to;
    reasons->push_back(std::move(reason));
  };
  const process::ProcessView& reader = read.lineage.process;
  if (tool) raise(v1::SEVERITY_HIGH, "reader is a shell, interpreter or transfer tool");
  if (reader.exec_session) raise(v1::SEVERITY_HIGH, "reader came through an exec session");
  // TW002 is the cross-pod rule itself; for TW005 another pod is context.
  if (rule_id == "TW005" && reader.container.has_value() &&
      reader.container->pod_uid != read.token.pod_uid) {
    raise(v1::SEVERITY_CRITICAL, "reader is in another pod");
  }
}

bool IsShellOrTool(const std::string& exe, const std::string& comm) {
  static const char* const kTools[] = {
      "sh",   "bash", "dash", "ash",  "zsh",  "ksh",   "busybox", "cat",   "head",   "tail",
      "base64", "dd", "cp",   "tar",  "grep", "egrep", "curl",    "wget",  "nc",     "ncat",
      "netcat", "socat", "perl", "ruby", "node", "php", "less",   "more",  "strings", "xxd",
      "od",   "find", "xargs", "awk", "sed"};
  for (absl::string_view name : {Basename(exe), absl::string_view(comm)}) {
    if (name.empty()) continue;
    for (const char* tool : kTools) {
      if (name == tool) return true;
    }
    if (absl::StartsWith(name, "python")) return true;
    // A renamed busybox (busybox.static, busybox-x) is still every applet.
    if (absl::StartsWith(name, "busybox")) return true;
  }
  return false;
}

std::vector<v1::Finding> Detector::OnTokenRead(const TokenRead& read) {
  const process::ProcessView& reader = read.lineage.process;
  const tokens::TokenInfo& token = read.token;
  std::string rule_id, rule_name, summary;
  v1::Severity severity = v1::SEVERITY_UNSPECIFIED;
  // What set or raised the severity (Finding.severity_reasons).
  std::vector<std::string> reasons;
  std::string reader_pod = "host";
  const bool tool = IsShellOrTool(reader.exe, reader.comm);
  last_unexpected_ = false;
  last_finding_id_.clear();

  if (read.io_uring) {
    // io_uring opens pass no open system call, which is how readers hide
    // from syscall-based sensors: whoever reads a token that way, TW005.
    bool other_pod = reader.container.has_value() && reader.container->pod_uid != token.pod_uid;
    reader_pod = reader.container.has_value() ? reader.container->pod_uid : "host";
    rule_id = "TW005";
    rule_name = "token-read-io-uring";
    severity = v1::SEVERITY_HIGH;  // critical from another pod: RaiseForContext
    summary = absl::StrFormat(
        "%s%s opened the service-account token of pod %s (service account %s) through io_uring.",
        Actor(reader), other_pod ? absl::StrCat(" in another pod (uid ", reader_pod, ")") : "",
        PodName(token), token.claims.service_account);
  } else if (!reader.container.has_value()) {
    for (const std::string& allowed : options_.host_allowed_exes) {
      if (reader.exe == allowed || Basename(reader.exe) == allowed) return {};
    }
    if (options_.expectations != nullptr && options_.expectations->HostReaderAllowed(reader)) {
      return {};
    }
    rule_id = "TW003";
    rule_name = "token-read-host";
    severity = v1::SEVERITY_HIGH;
    summary = absl::StrFormat(
        "Host process %s read the service-account token of pod %s (service account %s).",
        Actor(reader), PodName(token), token.claims.service_account);
  } else if (reader.container->pod_uid != token.pod_uid) {
    reader_pod = reader.container->pod_uid;
    rule_id = "TW002";
    rule_name = "token-read-cross-pod";
    severity = v1::SEVERITY_CRITICAL;
    std::string reader_pod_name =
        reader.pod_name.empty()
            ? absl::StrCat("uid ", reader.container->pod_uid)
            : absl::StrCat(reader.pod_namespace, "/", reader.pod_name);
    summary = absl::StrFormat(
        "%s in pod %s read the service-account token of another pod, %s (service account %s).",
        Actor(reader), reader_pod_name, PodName(token), token.claims.service_account);
  } else if (reader.exec_session) {
    // Someone entered the container (kubectl exec and the like) and read
    // the token: a person at a shell, not the workload.
    reader_pod = reader.container->pod_uid;
    rule_id = "TW004";
    rule_name = "token-read-exec-session";
    severity = v1::SEVERITY_HIGH;
    summary = absl::StrFormat(
        "%s, started through an exec session into pod %s, read the pod's service-account token "
        "(service account %s).",
        Actor(reader), PodName(token), token.claims.service_account);
  } else {
    reader_pod = reader.container->pod_uid;
    if (options_.expectations != nullptr) {
      if (options_.expectations->OwnPodReaderExpected(read, tool)) return {};
    } else if (!tool && !read.entrypoint_exe.empty() && reader.exe == read.entrypoint_exe) {
      return {};
    }
    rule_id = "TW001";
    rule_name = "token-read-unexpected";
    severity = v1::SEVERITY_MEDIUM;  // high for shells and tools: RaiseForContext
    summary = absl::StrFormat(
        "%s read the service-account token of its own pod %s (service account %s); the "
        "container's entrypoint is %s.",
        Actor(reader), PodName(token), token.claims.service_account,
        read.entrypoint_exe.empty() ? "unknown" : read.entrypoint_exe);
  }

  // The policy may switch the rule off or set its severity; context (a shell,
  // an exec session, another pod) then raises it, never lowers it. The
  // reasons go in their own field, not the summary: the summary says what
  // happened, and the lineage shows the shell or the exec session again.
  if (options_.expectations != nullptr) {
    std::optional<v1::Severity> set =
        options_.expectations->RuleSeverity(rule_id, read, severity, &reasons);
    if (!set.has_value()) return {};
    severity = *set;
  }
  RaiseForContext(rule_id, read, tool, &severity, &reasons);

  last_unexpected_ = true;
  // Fold by (rule, reader pod, exe, token): the token is named by its owner
  // and file, so the fold survives rotation.
  // A configured extra path has no pod, volume or file name: its path names it.
  std::string key = absl::StrCat(rule_id, "\x1f", reader_pod, "\x1f", reader.exe, "\x1f",
                                 token.pod_uid, "\x1f", token.volume, "\x1f", token.file_name,
                                 "\x1f", token.pod_uid.empty() ? token.host_path : "");
  const bool folding = options_.dedup_window > absl::ZeroDuration();
  if (folding) {
    auto it = folds_.find(key);
    if (it != folds_.end() && read.time - it->second.first < options_.dedup_window) {
      Fold& fold = it->second;
      fold.finding.set_count(fold.finding.count() + read.opens);
      if (read.time > FromTimestamp(fold.finding.last_seen())) {
        *fold.finding.mutable_last_seen() = ToTimestamp(read.time);
      }
      fold.dirty = true;
      folded_ += read.opens;
      last_finding_id_ = fold.finding.id();
      return {};
    }
    // This read opens a new window. The fold it replaces (Flush has not
    // run since its window closed) still owes its final count.
    if (it != folds_.end()) {
      if (it->second.dirty) closed_.push_back(it->second.finding);
      Erase(it);
    }
  }
  v1::Finding finding = BuildTokenReadFinding(options_.node, options_.hook_mode, read, rule_id,
                                               rule_name, severity, summary);
  // Lineage through an exec session is "Container Administration Command".
  if (reader.exec_session) finding.add_mitre("T1609");
  finding.set_count(read.opens);
  for (std::string& reason : reasons) finding.add_severity_reasons(std::move(reason));
  last_finding_id_ = finding.id();
  if (folding) {
    folds_[key] = Fold{finding, read.time, false};
    fold_of_id_[finding.id()] = key;
  }
  return {std::move(finding)};
}

void Detector::Erase(absl::flat_hash_map<std::string, Fold>::iterator it) {
  fold_of_id_.erase(it->second.finding.id());
  folds_.erase(it);
}

std::vector<v1::Finding> Detector::Flush(absl::Time now) {
  std::vector<v1::Finding> out = std::move(closed_);
  closed_.clear();
  for (auto it = folds_.begin(); it != folds_.end();) {
    auto next = std::next(it);
    Fold& fold = it->second;
    if (now - fold.first >= options_.dedup_window) {
      if (fold.dirty) out.push_back(fold.finding);
      Erase(it);
    }
    it = next;
  }
  return out;
}

std::vector<v1::Finding> Detector::FlushAll() {
  std::vector<v1::Finding> out = std::move(closed_);
  closed_.clear();
  for (auto& [key, fold] : folds_) {
    if (!fold.dirty) continue;
    out.push_back(fold.finding);
    fold.dirty = false;
  }
  return out;
}

std::vector<v1::Finding> Detector::OnTokenUsed(const std::string& use_rule,
                                               const std::string& read_finding_id) {
  v1::Severity to;
  std::string reason;
  if (use_rule == "TW010") {
    to = v1::SEVERITY_CRITICAL;
    reason = "the token was then used: a connection to the API server (TW010)";
  } else if (use_rule == "TW011") {
    to = v1::SEVERITY_HIGH;
    reason = "the token was then followed by a connection outside the cluster (TW011)";
  } else {
    return {};
  }
  auto id = fold_of_id_.find(read_finding_id);
  if (id == fold_of_id_.end()) return {};
  Fold& fold = folds_.at(id->second);
  v1::Finding& finding = fold.finding;
  for (const std::string& listed : finding.severity_reasons()) {
    if (listed == reason) return {};
  }
  if (finding.severity() < to) finding.set_severity(to);
  finding.add_severity_reasons(std::move(reason));
  // Exported in full now: the count folded so far goes with it.
  fold.dirty = false;
  return {finding};
}

}  // namespace tokenwatch::detect
