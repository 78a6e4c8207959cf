#include "agent/main/agent.h"

#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/log.h"
#include "agent/detect/finding_builder.h"
#include "agent/detect/sensor_findings.h"
#include "agent/main/version.h"

namespace tokenwatch::agent {
namespace {

tw_file_id ToKernelId(const tokens::FileId& id) { return tw_file_id{id.dev, id.ino}; }

std::string KernelRelease() {
  utsname u{};
  if (uname(&u) != 0) return "unknown";
  return u.release;
}

}  // namespace

Agent::Agent(AgentConfig config) : config_(std::move(config)) {}

Agent::~Agent() {
  // Stop producers before consumers: the watcher feeds the probe's map.
  if (watcher_ != nullptr) watcher_->Stop();
  if (collector_ != nullptr) collector_->Stop();
}

absl::Status Agent::EnsureStateDir() {
  if (mkdir(config_.state_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::InvalidArgumentError(
        absl::StrCat("--state-dir ", config_.state_dir, ": ", std::strerror(errno)));
  }
  // The agent id names this installation to the collector across restarts.
  std::string path = absl::StrCat(config_.state_dir, "/agent-id");
  std::ifstream in(path);
  std::string id;
  if (in && std::getline(in, id) && !absl::StripAsciiWhitespace(id).empty()) {
    agent_id_ = std::string(absl::StripAsciiWhitespace(id));
    return absl::OkStatus();
  }
  agent_id_ = detect::NewUuid();
  std::ofstream out(path, std::ios::trunc);
  out << agent_id_ << "\n";
  if (!out) {
    return absl::InvalidArgumentError(
        absl::StrCat("--state-dir ", config_.state_dir, ": cannot write ", path));
  }
  return absl::OkStatus();
}

absl::Status Agent::Init() {
  if (config_.log_level == "debug") SetLogLevel(LogLevel::kDebug);
  if (config_.log_level == "warning") SetLogLevel(LogLevel::kWarning);
  if (config_.log_level == "error") SetLogLevel(LogLevel::kError);

  // The hook mode is decided with the token hooks below, before any of them
  // stays attached (agent/probes/hook_mode.h); a bad name fails here.
  if (auto mode = probes::ParseHookMode(config_.hook_mode); !mode.ok()) return mode.status();

  if (absl::Status s = EnsureStateDir(); !s.ok()) return s;

  metrics_ = std::make_unique<metrics::AgentMetrics>(kVersion, kGitCommit, KernelRelease());
  // Serve before the probes load: /readyz answers 503 until they are attached.
  auto http = metrics::HttpServer::Start(config_.metrics_address, metrics_->registry(), &health_);
  if (!http.ok()) return http.status();
  http_ = *std::move(http);

  std::string btf_path;
  if (const char* btf = std::getenv("TOKENWATCH_BTF_PATH"); btf != nullptr) btf_path = btf;

  auto cgroups = k8s::CgroupResolver::Create();
  if (!cgroups.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cgroup v2 hierarchy: ", cgroups.status().message()));
  }
  cgroups_ = *std::move(cgroups);
  auto mount = k8s::FindCgroup2Mount();
  entrypoints_ = std::make_unique<process::EntrypointResolver>(mount.ok() ? *mount : "", &proc_);

  // The process table first, so that lineage is complete from the moment
  // token opens are seen; then seed it with the processes already running.
  probes::ProcessProbe::Options process_options;
  process_options.btf_path = btf_path;
  process_options.max_processes = config_.process_table_size;
  process_options.max_exited = std::max<uint32_t>(1024, config_.process_table_size / 4);
  process_options.argv_bytes = config_.argv_bytes;
  auto processes = probes::ProcessProbe::Create(process_options);
  if (!processes.ok()) return processes.status();
  processes_ = *std::move(processes);
  auto seeded = processes_->Seed(proc_.root(), mount.ok() ? *mount : "");
  if (!seeded.ok()) return seeded.status();
  for (const std::string& name : processes_->attached()) metrics_->SetProbeAttached(name, true);

  // The token hooks: the strongest mode the kernel allows (or the one asked for).
  probes::TokenHooks::Options hook_options;
  hook_options.requested = config_.hook_mode;
  hook_options.proc_root = proc_.root();
  hook_options.probe.self_tgid = static_cast<uint32_t>(getpid());
  hook_options.probe.btf_path = btf_path;
  hook_options.probe.procs_fd = processes_->procs_fd();
  hook_options.probe.exited_fd = processes_->exited_fd();
  hook_options.probe.max_depth = config_.lineage_depth;
  hook_options.probe.argv_bytes = config_.argv_bytes;
  hook_options.probe.ring_bytes = config_.ring_buffer_bytes;
  hook_options.probe.dedup_window = config_.dedup_window;
  auto probe = probes::TokenHooks::Open(hook_options);
  if (!probe.ok()) return probe.status();
  probe_ = *std::move(probe);
  hook_mode_ = probe_->mode_name();
  metrics_->SetHookMode(hook_mode_);
  for (const std::string& name : probe_->attached()) metrics_->SetProbeAttached(name, true);
  health_.SetProbesAttached(true);
  lineage_ = std::make_unique<process::LineageBuilder>(
      process::LineageBuilder::Options{config_.lineage_depth}, &proc_, cgroups_.get(), &clock_);

  // Policy, learned baselines and severity: the config's `policy:` key.
  detect::PolicyRuntime::Options policy_options;
  policy_options.config_file = config_.config_file;
  policy_options.state_dir = config_.state_dir;
  policy_options.node = config_.node_name;
  policy_options.proc_root = proc_.root();
  policy_options.check_agent_keys = [](const std::string& path) {
    AgentConfig scratch;
    return LoadAgentConfigFile(path, &scratch);
  };
  auto policy = detect::PolicyRuntime::Create(std::move(policy_options));
  if (!policy.ok()) return policy.status();
  policy_ = *std::move(policy);

  detect::DetectorOptions detector_options;
  detector_options.node = config_.node_name;
  detector_options.hook_mode = hook_mode_;
  detector_options.dedup_window = config_.dedup_window;
  if (!config_.host_allowed_executables.empty()) {
    detector_options.host_allowed_exes = config_.host_allowed_executables;
  }
  detector_options.expectations = policy_->expectations();
  detector_ = std::make_unique<detect::Detector>(detector_options);
  ReopenLedger::Options ledger_options;
  ledger_options.window = config_.dedup_window;
  ledger_options.idle_expiry = config_.dedup_window + absl::Minutes(1);
  reopens_ = std::make_unique<ReopenLedger>(ledger_options);
  sensor_loss_ = std::make_unique<detect::SensorLossReporter>(config_.node_name, hook_mode_);

  // Read -> use: connections to the API server, the metadata service and
  // the internet, and tokens on command lines.
  TokenUse::Deps use_deps;
  use_deps.config = &config_;
  use_deps.processes = processes_.get();
  use_deps.lineage = lineage_.get();
  use_deps.clock = &clock_;
  use_deps.name_pod = [this](process::ProcessView* v) { NamePod(v); };
  use_deps.apiserver_contact_expected = [this](const process::ProcessView& v) {
    return ApiserverContactExpected(v);
  };
  use_deps.lookup_digest = [this](const std::string& digest) {
    return inventory_->LookupDigest(digest);
  };
  // A fold re-sent at its window's end is no new finding: exported, not raised.
  use_deps.resend = [this](const v1::Finding& f) { Export(f); };
  use_deps.raise = [this](const v1::Finding& f) { Raise(f); };
  // A read whose token was then used is graver: its finding is sent again
  // (same id) with the raised severity; not a new finding, so Export.
  use_deps.token_used = [this](const std::string& rule_id, const detect::TokenRead& read) {
    for (const v1::Finding& raised : detector_->OnTokenUsed(rule_id, read.finding_id)) {
      Export(raised);
    }
  };
  use_deps.count_record = [this](const std::string& type) { metrics_->KernelRecord(type); };
  use_deps.hook_mode = hook_mode_;
  auto use = TokenUse::Create(std::move(use_deps));
  if (!use.ok()) return use.status();
  use_ = *std::move(use);
  for (const std::string& name : use_->attached()) metrics_->SetProbeAttached(name, true);

  auto json = exporting::JsonLinesWriter::Open(config_.findings_out);
  if (!json.ok()) return json.status();
  json_ = *std::move(json);
  if (!config_.collector.empty()) {
    exporting::CollectorClient::Options options;
    options.address = config_.collector;
    options.node = config_.node_name;
    options.agent_id = agent_id_;
    options.version = kVersion;
    options.spool.dir = absl::StrCat(config_.state_dir, "/spool");
    options.spool.max_bytes = config_.spool_max_bytes;
    options.sync_interval = config_.spool_sync_interval;
    options.tls_ca = config_.collector_tls_ca;
    options.tls_cert = config_.collector_tls_cert;
    options.tls_key = config_.collector_tls_key;
    auto client = exporting::CollectorClient::Create(options);
    if (!client.ok()) return client.status();
    collector_ = *std::move(client);
    collector_->Start();
    exporting::ProfileUploader::Options upload_options;
    upload_options.channel = {config_.collector, config_.collector_tls_ca,
                              config_.collector_tls_cert, config_.collector_tls_key};
    upload_options.node = config_.node_name;
    upload_options.agent_id = agent_id_;
    detect::Baseline* baseline = policy_->baseline();
    auto uploader = exporting::ProfileUploader::Create(
        upload_options, {[baseline] { return baseline->generation(); },
                         [baseline] { return baseline->Profiles(); }});
    if (!uploader.ok()) return uploader.status();
    profile_uploader_ = *std::move(uploader);
  }

  // The first inventory is loaded into the kernel map before we say ready.
  tokens::TokenInventory::Options inventory_options;
  inventory_options.kubelet_root = config_.kubelet_root;
  inventory_options.extra_paths = config_.extra_token_paths;
  inventory_ = std::make_unique<tokens::TokenInventory>(inventory_options);
  ApplyInventoryDelta(inventory_->Rescan());
  auto watcher = tokens::InventoryWatcher::Start(
      inventory_.get(), [this](const tokens::InventoryDelta& d) { ApplyInventoryDelta(d); },
      config_.rescan_interval);
  if (!watcher.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("watch ", config_.kubelet_root, ": ", watcher.status().message()));
  }
  watcher_ = *std::move(watcher);
  health_.SetInventoryLoaded(true);
  health_.Heartbeat();

  Logf(LogLevel::kInfo,
       "tokenwatch-agent %s on node %s: hook mode %s (%s), %d processes seeded, %d tokens "
       "watched under %s, metrics on %s, findings to %s%s",
       kVersion, config_.node_name, hook_mode_, absl::StrJoin(probe_->attached(), ", "),
       *seeded, inventory_->Snapshot().size(), config_.kubelet_root, config_.metrics_address,
       config_.findings_out,
       config_.collector.empty() ? "" : absl::StrCat(" and collector ", config_.collector));
  return absl::OkStatus();
}

void Agent::ApplyInventoryDelta(const tokens::InventoryDelta& delta) {
  absl::MutexLock lock(&watch_mu_);
  // A rotated token's new inode is watched before the old one is dropped.
  for (const tokens::TokenInfo& token : delta.added) {
    if (absl::Status s = probe_->Watch(ToKernelId(token.id), token.host_path); !s.ok()) {
      Logf(LogLevel::kWarning, "%s", s.message());
      metrics_->ProcessingError("watch");
      continue;
    }
    Logf(LogLevel::kInfo, "watching token %s (pod %s/%s, service account %s)", token.host_path,
         token.claims.namespace_name, token.claims.pod_name, token.claims.service_account);
  }
  for (const tokens::TokenInfo& token : delta.removed) {
    if (absl::Status s = probe_->Unwatch(ToKernelId(token.id)); !s.ok()) {
      Logf(LogLevel::kWarning, "%s", s.message());
    }
    Logf(LogLevel::kInfo, "no longer watching %s", token.host_path);
  }
  {
    absl::flat_hash_map<std::string, std::pair<std::string, std::string>> names;
    absl::flat_hash_map<std::string, std::string> accounts;
    for (const tokens::TokenInfo& token : inventory_->Snapshot()) {
      if (!token.claims.pod_name.empty()) {
        names[token.pod_uid] = {token.claims.namespace_name, token.claims.pod_name};
        accounts[token.pod_uid] = token.claims.service_account;
      }
    }
    absl::MutexLock pods_lock(&pods_mu_);
    pod_names_ = std::move(names);
    pod_accounts_ = std::move(accounts);
  }
  tokens::InventoryStats stats = inventory_->stats();
  metrics_->SetTokensWatched(static_cast<double>(stats.tokens));
  metrics_->SetInventoryErrors("malformed", stats.malformed);
  metrics_->SetInventoryErrors("unreadable", stats.unreadable);
}

bool Agent::ApiserverContactExpected(const process::ProcessView& view) {
  if (!view.container.has_value() || view.pod_name.empty()) return true;  // cannot tell
  detect::WorkloadKey key;
  key.namespace_name = view.pod_namespace;
  key.pod_name = view.pod_name;
  key.workload = detect::WorkloadName(view.pod_name, config_.node_name);
  key.container = entrypoints_->EntrypointExe(view.cgroup);
  {
    absl::MutexLock lock(&pods_mu_);
    auto it = pod_accounts_.find(view.container->pod_uid);
    if (it != pod_accounts_.end()) key.service_account = it->second;
  }
  return policy_->expectations()->ApiserverContactExpected(key, view.exe, absl::Now());
}

void Agent::NamePod(process::ProcessView* view) {
  if (!view->container.has_value()) return;
  absl::MutexLock lock(&pods_mu_);
  auto it = pod_names_.find(view->container->pod_uid);
  if (it == pod_names_.end()) return;
  view->pod_namespace = it->second.first;
  view->pod_name = it->second.second;
}

void Agent::OnTokenOpen(const tw_token_open& event) {
  metrics_->KernelRecord("token_open");
  metrics_->TokenOpens("reported", 1);
  std::optional<tokens::TokenInfo> token = inventory_->Lookup(tokens::FileId{event.file.dev, event.file.ino});
  if (!token.has_value()) {
    // The token left the inventory between the open and now (pod deleted).
    metrics_->ProcessingError("token_lookup");
    return;
  }
  detect::TokenRead read;
  read.kernel_ts_ns = event.hdr.ts_ns;
  read.time = clock_.ToTime(event.hdr.ts_ns);
  read.token = *std::move(token);
  read.lineage = lineage_->FromTokenOpen(event);
  NamePod(&read.lineage.process);
  for (process::ProcessView& ancestor : read.lineage.ancestors) NamePod(&ancestor);
  read.syscall = probes::OpenAccessText(event);
  read.io_uring = event.access == TW_ACCESS_IO_URING;
  read.flags = event.flags;
  if (!read.lineage.process.cgroup.empty() && read.lineage.process.container.has_value()) {
    read.entrypoint_exe = entrypoints_->EntrypointExe(read.lineage.process.cgroup);
  }
  for (const v1::Finding& finding : detector_->OnTokenRead(read)) {
    Raise(finding);
    // Both ends on the boot clock: kernel event -> finding with the exporters.
    const uint64_t now_ns = clock_.NowBoottimeNs();
    if (now_ns >= event.hdr.ts_ns) {
      metrics_->ObserveDetectionLatency(static_cast<double>(now_ns - event.hdr.ts_ns) / 1e9);
    }
  }
  const bool unexpected = detector_->last_unexpected();
  if (unexpected) {
    read.finding_id = detector_->last_finding_id();
    use_->OnUnexpectedRead(read);
  }
  // Later rereads in this window are only counted by the hooks; they are
  // credited to this read (an expected read needs no credit).
  uint64_t increment = 0;
  std::optional<detect::TokenRead> previous =
      reopens_->OnRecord(ReopenKeyOf(event), event.folded_before,
                         unexpected ? std::optional<detect::TokenRead>(read) : std::nullopt,
                         absl::Now(), &increment);
  metrics_->TokenOpens("folded", increment);
  if (previous.has_value()) Credit(*previous);
}

void Agent::Credit(const detect::TokenRead& credit) {
  for (const v1::Finding& finding : detector_->OnTokenRead(credit)) Raise(finding);
}

void Agent::CreditReopens() {
  auto reopens = probe_->ReadReopens();
  if (!reopens.ok()) {
    Logf(LogLevel::kWarning, "%s", reopens.status().message());
    metrics_->ProcessingError("reopens");
    return;
  }
  const absl::Time now = absl::Now();
  for (const probes::TokenOpenProbe::Reopen& reopen : *reopens) {
    uint64_t increment = 0;
    std::optional<detect::TokenRead> credit =
        reopens_->OnTotal(reopen.key, reopen.value.folded, now, &increment);
    metrics_->TokenOpens("folded", increment);
    if (credit.has_value()) Credit(*credit);
  }
  reopens_->Expire(now);
  metrics_->SetFanotifyEvents(probe_->fanotify_events());
}

void Agent::Raise(const v1::Finding& finding) {
  metrics_->Finding(finding.rule_id(), detect::SeverityName(finding.severity()));
  Logf(LogLevel::kInfo, "finding %s %s %s: %s", finding.rule_id(),
       detect::SeverityName(finding.severity()), finding.id(), finding.summary());
  Export(finding);
}

void Agent::Export(const v1::Finding& finding) {
  if (absl::Status s = json_->Write(finding); !s.ok()) {
    Logf(LogLevel::kWarning, "%s", s.message());
    metrics_->ProcessingError("json_lines");
  }
  if (collector_ != nullptr) collector_->Enqueue(finding);
}

void Agent::Housekeeping() {
  // Counts first, so a fold closing now carries every open of its window.
  CreditReopens();
  for (const v1::Finding& finding : detector_->Flush(absl::Now())) Export(finding);
  policy_->Housekeeping(absl::Now());
  detect::PolicyReloadStats reloads = policy_->reload_stats();
  for (; policy_successes_seen_ < reloads.successes; ++policy_successes_seen_) {
    metrics_->PolicyReload(true);
  }
  for (; policy_failures_seen_ < reloads.failures; ++policy_failures_seen_) {
    metrics_->PolicyReload(false);
  }
  use_->Housekeeping(absl::Now());
  if (profile_uploader_ != nullptr) profile_uploader_->Tick(absl::Now());
  metrics_->SetApiServersWatched(static_cast<double>(use_->apiservers().size()));
  metrics_->SetFolded(detector_->folded());
  auto stats = probe_->ReadStats();
  // Both rings: token opens, and connections and argv tokens.
  const uint64_t ring_full = stats[TW_STAT_RING_FULL] + use_->ReadStats()[TW_STAT_RING_FULL];
  metrics_->KernelDrops("ring_full", ring_full);
  ReportFanotifyOverflows();
  if (absl::Now() >= next_table_count_) {
    // Walking the table's keys costs a syscall each: not every second.
    metrics_->SetProcessesTracked(static_cast<double>(processes_->CountEntries()));
    next_table_count_ = absl::Now() + absl::Seconds(15);
  }
  auto proc_stats = processes_->ReadStats();
  metrics_->KernelDrops("proc_table_update_failed", proc_stats[TW_STAT_PROC_UPDATE_FAILED]);
  metrics_->KernelDrops("proc_table_evicted",
                        proc_stats[TW_STAT_PROC_MISSING] + stats[TW_STAT_PROC_MISSING]);
  // Lost records are lost detections: say so as a finding too (TW090).
  if (std::optional<v1::Finding> lost = sensor_loss_->Observe(
          detect::SensorLoss{ring_full, proc_stats[TW_STAT_PROC_UPDATE_FAILED]},
          absl::Now())) {
    Raise(*lost);
  }
  // New tokens appear under the kubelet root: while it cannot be read, we are not ready.
  std::string problem = metrics::DirectoryProblem(config_.kubelet_root);
  if (problem != inventory_problem_) {
    if (problem.empty()) {
      Logf(LogLevel::kInfo, "kubelet root %s is readable again", config_.kubelet_root);
    } else {
      Logf(LogLevel::kError, "token inventory unreadable: %s", problem);
    }
    inventory_problem_ = problem;
    health_.SetInventoryProblem(problem);
  }
  metrics_->SetReady(health_.NotReadyReason().empty());
  if (collector_ != nullptr) {
    exporting::CollectorClient::Stats s = collector_->stats();
    metrics_->SetExport(s.queue_depth, s.sent, s.acked, s.send_failures, s.dropped, s.connected);
    metrics_->SetSpoolBytes(s.spool_bytes);
  }
  if (profile_uploader_ != nullptr) {
    exporting::ProfileUploader::Stats s = profile_uploader_->stats();
    metrics_->SetProfileUploads(s.uploads, s.failures);
  }
}

// A full fanotify queue drops token opens unseen: count it and raise TW090,
// at most once a minute, counting the overflows since the last finding.
void Agent::ReportFanotifyOverflows() {
  uint64_t overflows = probe_->fanotify_overflows();
  metrics_->KernelDrops("fanotify_overflow", overflows);
  if (overflows <= fanotify_overflows_reported_) return;
  absl::Time now = absl::Now();
  if (now - last_overflow_report_ < absl::Minutes(1)) return;
  uint64_t lost = overflows - fanotify_overflows_reported_;
  v1::Finding finding = detect::BuildSensorEventsLostFinding(config_.node_name, hook_mode_,
                                                             detect::SensorLoss{}, now, now);
  finding.set_count(lost);
  finding.set_summary(absl::StrCat(
      "the fanotify event queue overflowed ", lost, " time(s): token reads in that window may ",
      "have gone unseen"));
  fanotify_overflows_reported_ = overflows;
  last_overflow_report_ = now;
  Raise(finding);
}

void Agent::Run() {
  const probes::TokenOpenProbe::Handler handler = [this](const tw_token_open& event) {
    OnTokenOpen(event);
  };
  absl::Time next_housekeeping = absl::Now();
  while (!stop_) {
    auto polled = probe_->Poll(absl::Milliseconds(100), handler);
    if (!polled.ok()) {
      Logf(LogLevel::kError, "%s", polled.status().message());
      metrics_->ProcessingError("ring");
    }
    use_->Poll();
    health_.Heartbeat();
    if (absl::Now() >= next_housekeeping) {
      Housekeeping();
      next_housekeeping = absl::Now() + absl::Seconds(1);
    }
  }
  Housekeeping();
  // Counts still growing in open folds would be lost with the process.
  for (const v1::Finding& finding : detector_->FlushAll()) Export(finding);
  for (const v1::Finding& finding : use_->FlushAll()) Export(finding);
  policy_->Stop();
  // After the baseline's last save: what was learned last reaches the collector too.
  if (profile_uploader_ != nullptr) profile_uploader_->Stop();
  Logf(LogLevel::kInfo, "stopping");
}

}  // namespace tokenwatch::agent
