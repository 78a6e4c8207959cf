#include "agent/detect/baseline.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/profile_policy.h"
#include "yaml-cpp/yaml.h"

namespace tokenwatch::detect {
namespace {

constexpr int kFormatVersion = 1;

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime(absl::RFC3339_full, t, absl::UTCTimeZone());
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& content) {
  std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("open ", tmp, ": ", std::strerror(errno)));
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = write(fd, content.data() + done, content.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return absl::InternalError(absl::StrCat("write ", tmp, ": ", std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  // The rename must not reach the disk before the data: a crash would leave
  // an empty profile and restart every window.
  if (fsync(fd) != 0 || close(fd) != 0) {
    return absl::InternalError(absl::StrCat("fsync ", tmp, ": ", std::strerror(errno)));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("rename ", tmp, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Baseline>> Baseline::Open(const std::string& state_dir,
                                                         std::string* warning, bool read_only) {
  std::unique_ptr<Baseline> b(new Baseline());
  b->path_ = absl::StrCat(state_dir, "/", kFileName);
  std::ifstream in(b->path_, std::ios::binary);
  if (!in.is_open()) {
    if (errno == ENOENT) return b;
    return absl::FailedPreconditionError(
        absl::StrCat("baseline ", b->path_, ": ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  absl::MutexLock lock(&b->mu_);
  if (absl::Status s = b->LoadText(text.str()); !s.ok()) {
    if (read_only) {
      return absl::DataLossError(absl::StrCat("baseline ", b->path_, " is damaged: ", s.message()));
    }
    std::string aside = b->path_ + ".bad";
    rename(b->path_.c_str(), aside.c_str());
    b->profiles_.clear();
    if (warning != nullptr) {
      *warning = absl::StrCat("baseline ", b->path_, " is damaged (", s.message(),
                              "); moved to ", aside, ", learning starts afresh");
    }
  }
  return b;
}

std::unique_ptr<Baseline> Baseline::InMemory() { return std::unique_ptr<Baseline>(new Baseline()); }

absl::Status Baseline::LoadText(const std::string& text) {
  YAML::Node root;
  // yaml-cpp throws on bad input; the file is ours, but disks and people
  // damage files.
  try {
    root = YAML::Load(text);
    if (root.IsNull()) return absl::OkStatus();
    if (!root.IsMap() || root["version"].as<int>() != kFormatVersion) {
      return absl::InvalidArgumentError("unknown format version");
    }
    const YAML::Node& list = root["workloads"];
    if (!list) return absl::OkStatus();
    if (!list.IsSequence()) return absl::InvalidArgumentError("workloads is not a list");
    for (const YAML::Node& item : list) {
      Profile p;
      p.namespace_name = item["namespace"].as<std::string>();
      p.workload = item["workload"].as<std::string>();
      p.container = item["container"].as<std::string>("");
      p.service_account = item["service_account"].as<std::string>("");
      std::string err;
      if (!absl::ParseTime(absl::RFC3339_full, item["first_seen"].as<std::string>(),
                           &p.first_seen, &err)) {
        return absl::InvalidArgumentError(absl::StrCat("first_seen: ", err));
      }
      for (const char* key : {"token_readers", "apiserver_clients"}) {
        const YAML::Node& exes = item[key];
        if (!exes) continue;
        for (const YAML::Node& exe : exes) {
          (std::string(key) == "token_readers" ? p.token_readers : p.apiserver_clients)
              .insert(exe.as<std::string>());
        }
      }
      WorkloadKey key{p.namespace_name, p.workload, p.container, p.service_account, ""};
      profiles_[key.Id()] = std::move(p);
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("line ", e.mark.line + 1, ": ", e.msg));
  }
  return absl::OkStatus();
}

void Baseline::SetLearning(const LearningSettings& learning) {
  absl::MutexLock lock(&mu_);
  // Called for every judged read: only a real change is news to the uploader.
  if (learning.enabled != learning_.enabled || learning.window != learning_.window) {
    ++generation_;
  }
  learning_ = learning;
}

Observation Baseline::Record(const WorkloadKey& workload, const std::string& exe, absl::Time now,
                             bool apiserver) {
  absl::MutexLock lock(&mu_);
  const std::string id = workload.Id();
  auto it = profiles_.find(id);
  if (it == profiles_.end()) {
    if (!learning_.enabled) return Observation::kNew;
    Profile p;
    p.namespace_name = workload.namespace_name;
    p.workload = workload.workload;
    p.container = workload.container;
    p.service_account = workload.service_account;
    p.first_seen = now;
    it = profiles_.emplace(id, std::move(p)).first;
    dirty_ = true;
    ++generation_;
  }
  Profile& p = it->second;
  absl::btree_set<std::string>& set = apiserver ? p.apiserver_clients : p.token_readers;
  if (set.contains(exe)) return Observation::kKnown;
  if (learning_.enabled && now < p.first_seen + learning_.window) {
    set.insert(exe);
    dirty_ = true;
    ++generation_;
    return Observation::kLearning;
  }
  return Observation::kNew;
}

Observation Baseline::RecordTokenRead(const WorkloadKey& workload, const std::string& exe,
                                      absl::Time now) {
  return Record(workload, exe, now, false);
}

Observation Baseline::RecordApiserverContact(const WorkloadKey& workload, const std::string& exe,
                                             absl::Time now) {
  return Record(workload, exe, now, true);
}

bool Baseline::Learning(const WorkloadKey& workload, absl::Time now) const {
  absl::MutexLock lock(&mu_);
  if (!learning_.enabled) return false;
  auto it = profiles_.find(workload.Id());
  return it == profiles_.end() || now < it->second.first_seen + learning_.window;
}

size_t Baseline::workloads() const {
  absl::MutexLock lock(&mu_);
  return profiles_.size();
}

std::string Baseline::SerializeLocked() const {
  YAML::Emitter out;
  out << YAML::Comment("tokenwatch learned profiles; written by the agent, do not edit");
  out << YAML::BeginMap << YAML::Key << "version" << YAML::Value << kFormatVersion;
  out << YAML::Key << "workloads" << YAML::Value << YAML::BeginSeq;
  for (const auto& [id, p] : profiles_) {
    out << YAML::BeginMap;
    out << YAML::Key << "namespace" << YAML::Value << p.namespace_name;
    out << YAML::Key << "workload" << YAML::Value << p.workload;
    out << YAML::Key << "container" << YAML::Value << p.container;
    out << YAML::Key << "service_account" << YAML::Value << p.service_account;
    out << YAML::Key << "first_seen" << YAML::Value << Rfc3339(p.first_seen);
    out << YAML::Key << "token_readers" << YAML::Value << YAML::BeginSeq;
    for (const std::string& exe : p.token_readers) out << exe;
    out << YAML::EndSeq;
    out << YAML::Key << "apiserver_clients" << YAML::Value << YAML::BeginSeq;
    for (const std::string& exe : p.apiserver_clients) out << exe;
    out << YAML::EndSeq << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

absl::Status Baseline::Save() {
  std::string text;
  {
    absl::MutexLock lock(&mu_);
    if (path_.empty() || !dirty_) return absl::OkStatus();
    text = SerializeLocked();
    dirty_ = false;
  }
  absl::Status s = WriteFileAtomically(path_, text);
  if (!s.ok()) {
    absl::MutexLock lock(&mu_);
    dirty_ = true;  // try again next time
  }
  return s;
}

std::vector<v1::LearnedProfile> Baseline::Profiles() const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::LearnedProfile> out;
  out.reserve(profiles_.size());
  for (const auto& [id, p] : profiles_) {
    v1::LearnedProfile& lp = out.emplace_back();
    lp.set_namespace_(p.namespace_name);
    lp.set_workload(p.workload);
    lp.set_container(p.container);
    lp.set_service_account(p.service_account);
    for (const std::string& exe : p.token_readers) lp.add_token_readers()->set_path(exe);
    for (const std::string& exe : p.apiserver_clients) lp.add_apiserver_clients()->set_path(exe);
    profiles::SetTime(p.first_seen, lp.mutable_learning_started());
    profiles::SetTime(p.first_seen + learning_.window, lp.mutable_learning_ends());
    lp.set_learning_disabled(!learning_.enabled);
  }
  return out;
}

uint64_t Baseline::generation() const {
  absl::MutexLock lock(&mu_);
  return generation_;
}

std::string Baseline::ExportPolicyYaml(const std::string& filter) const {
  std::vector<v1::LearnedProfile> selected;
  for (v1::LearnedProfile& p : Profiles()) {
    if (filter.empty() || GlobMatch(filter, absl::StrCat(p.namespace_(), "/", p.workload()))) {
      selected.push_back(std::move(p));
    }
  }
  return profiles::RenderPolicyYaml(profiles::MergeProfiles(selected, absl::Now()));
}

// ---------------------------------------------------------------------------
// Expectations

bool Expectations::ExecutableAllowed(const std::vector<AllowedExecutable>& allowed,
                                     const std::string& exe, uint32_t pid) const {
  std::optional<absl::StatusOr<std::string>> hash;  // computed once, when needed
  for (const AllowedExecutable& a : allowed) {
    if (!GlobMatch(a.exe, exe)) continue;
    if (a.sha256.empty()) return true;
    if (hasher_ == nullptr || pid == 0) continue;
    if (!hash.has_value()) hash = hasher_->OfProcess(pid);
    if (hash->ok() && **hash == a.sha256) return true;
  }
  return false;
}

bool Expectations::HostReaderAllowed(const process::ProcessView& reader) const {
  std::shared_ptr<const Policy> policy = policies_->Current();
  return ExecutableAllowed(policy->host_executables(), reader.exe, reader.exited ? 0 : reader.pid);
}

bool Expectations::OwnPodReaderExpected(const TokenRead& read, bool tool, std::string* why) {
  const process::ProcessView& reader = read.lineage.process;
  std::shared_ptr<const Policy> policy = policies_->Current();
  WorkloadKey key = WorkloadOf(read, node_);
  const WorkloadPolicy* wp = policy->Match(key);
  auto say = [&](std::string reason) {
    if (why != nullptr) *why = std::move(reason);
  };
  if (wp != nullptr &&
      ExecutableAllowed(wp->executables, reader.exe, reader.exited ? 0 : reader.pid)) {
    say(absl::StrCat("allowed by policy (line ", wp->line, ")"));
    return true;
  }
  // Shells and tools are never learned and never the "entrypoint" that is
  // trusted: a container whose entrypoint is sh would otherwise bless every
  // script it runs.
  if (tool) return false;
  bool entrypoint = !read.entrypoint_exe.empty() && reader.exe == read.entrypoint_exe;
  Observation seen = Observation::kNew;
  if (baseline_ != nullptr) {
    baseline_->SetLearning(policy->learning());
    seen = baseline_->RecordTokenRead(key, reader.exe, read.time);
  }
  if (entrypoint) {
    say("the container's entrypoint");
    return true;
  }
  if (seen == Observation::kLearning) {
    say("learning");
    return true;
  }
  if (seen == Observation::kKnown) {
    say("learned");
    return true;
  }
  return false;
}

std::optional<v1::Severity> Expectations::RuleSeverity(const std::string& rule_id,
                                                       const TokenRead& read, v1::Severity base,
                                                       std::vector<std::string>* reasons) const {
  std::shared_ptr<const Policy> policy = policies_->Current();
  const WorkloadPolicy* wp = policy->Match(WorkloadOf(read, node_));
  std::optional<v1::Severity> severity = policy->RuleSeverity(rule_id, base, wp);
  if (severity.has_value() && *severity != base && reasons != nullptr) {
    reasons->push_back(absl::StrCat("policy sets ", rule_id, " to ", SeverityName(*severity)));
  }
  return severity;
}

bool Expectations::ApiserverContactExpected(const WorkloadKey& workload, const std::string& exe,
                                            absl::Time now) {
  std::shared_ptr<const Policy> policy = policies_->Current();
  const WorkloadPolicy* wp = policy->Match(workload);
  if (wp != nullptr && wp->apiserver_contact.has_value()) return *wp->apiserver_contact;
  if (baseline_ == nullptr) return false;
  baseline_->SetLearning(policy->learning());
  return baseline_->RecordApiserverContact(workload, exe, now) != Observation::kNew;
}

// ---------------------------------------------------------------------------
// PolicyRuntime

absl::StatusOr<std::unique_ptr<PolicyRuntime>> PolicyRuntime::Create(Options options) {
  std::unique_ptr<PolicyRuntime> rt(new PolicyRuntime(std::move(options)));
  const Options& o = rt->options_;
  std::shared_ptr<const Policy> initial = std::make_shared<const Policy>();
  if (!o.config_file.empty()) {
    auto loaded = Policy::LoadFile(o.config_file);
    if (!loaded.ok()) return loaded.status();
    initial = *std::move(loaded);
    auto watcher = ConfigFileWatcher::Create(o.config_file);
    if (watcher.ok()) {
      rt->watcher_ = *std::move(watcher);
    } else {
      Logf(LogLevel::kWarning, "config %s: changes are not noticed (%s); send SIGHUP to reload",
           o.config_file, watcher.status().message());
    }
  }
  rt->policies_ = std::make_unique<PolicyStore>(initial, o.config_file, o.check_agent_keys);
  std::string warning;
  auto baseline = Baseline::Open(o.state_dir, &warning);
  if (!baseline.ok()) return baseline.status();
  if (!warning.empty()) Logf(LogLevel::kWarning, "%s", warning);
  rt->baseline_ = *std::move(baseline);
  rt->baseline_->SetLearning(initial->learning());
  rt->hasher_ = std::make_unique<ExeHasher>(o.proc_root);
  rt->expectations_ = std::make_unique<Expectations>(rt->policies_.get(), rt->baseline_.get(),
                                                     rt->hasher_.get(), o.node);
  Logf(LogLevel::kInfo,
       "policy: %d workload entries, %d host executables, learning %s (window %s), %d learned "
       "profiles",
       initial->workloads().size(), initial->host_executables().size(),
       initial->learning().enabled ? "on" : "off", absl::FormatDuration(initial->learning().window),
       rt->baseline_->workloads());
  return rt;
}

void PolicyRuntime::Housekeeping(absl::Time now) {
  bool asked = reload_requested_.exchange(false);
  if (watcher_ != nullptr && watcher_->Poll()) {
    change_pending_ = true;
    last_change_ = now;
  }
  // A file written in place is seen mid-write: wait until the directory has
  // been quiet for a moment before reading it.
  bool changed = change_pending_ && now - last_change_ >= absl::Milliseconds(500);
  if (changed) change_pending_ = false;
  if (asked || changed) {
    // A SIGHUP always reloads (and counts); a directory event only when the
    // file's content differs from the last one tried.
    absl::Status s = policies_->Reload(/*only_if_changed=*/!asked);
    if (s.ok()) {
      std::shared_ptr<const Policy> p = policies_->Current();
      baseline_->SetLearning(p->learning());
      Logf(LogLevel::kInfo, "policy reloaded from %s: %d workload entries (reloads %d, rejected %d)",
           options_.config_file, p->workloads().size(), policies_->stats().successes,
           policies_->stats().failures);
    } else {
      Logf(LogLevel::kError, "policy reload rejected, the previous policy stays: %s",
           s.message());
    }
  }
  if (now >= next_save_) {
    if (absl::Status s = baseline_->Save(); !s.ok()) {
      Logf(LogLevel::kWarning, "baseline: %s", s.message());
    }
    next_save_ = now + options_.save_interval;
  }
}

void PolicyRuntime::Stop() {
  if (absl::Status s = baseline_->Save(); !s.ok()) {
    Logf(LogLevel::kWarning, "baseline: %s", s.message());
  }
}

absl::StatusOr<std::string> ExportProfile(const std::string& state_dir,
                                          const std::string& config_file,
                                          const std::string& filter) {
  std::string path = absl::StrCat(state_dir, "/", Baseline::kFileName);
  if (access(path.c_str(), R_OK) != 0) {
    return absl::NotFoundError(
        absl::StrCat("no learned profile at ", path, ": ", std::strerror(errno)));
  }
  auto baseline = Baseline::Open(state_dir, nullptr, /*read_only=*/true);
  if (!baseline.ok()) return baseline.status();
  if (!config_file.empty()) {
    auto policy = Policy::LoadFile(config_file);
    if (!policy.ok()) return policy.status();
    (*baseline)->SetLearning((*policy)->learning());
  }
  return (*baseline)->ExportPolicyYaml(filter);
}

}  // namespace tokenwatch::detect
