#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "agent/detect/detector.h"
#include "agent/detect/sensor_findings.h"
#include "agent/export/collector_client.h"
#include "agent/export/json_lines.h"
#include "agent/export/profile_uploader.h"
#include "agent/k8s/cgroup.h"
#include "agent/main/config.h"
#include "agent/main/reopens.h"
#include "agent/main/token_use.h"
#include "agent/metrics/agent_metrics.h"
#include "common/http_server.h"
#include "agent/probes/hook_mode.h"
#include "agent/probes/process_probe.h"
#include "agent/probes/token_open_probe.h"
#include "agent/process/lineage.h"
#include "agent/process/proc_reader.h"
#include "agent/tokens/inventory.h"

namespace tokenwatch::agent {

// The node agent: owns every stage and runs the data flow
//   kernel -> ring reader -> decode -> enrich -> detect -> export.
// Init() fails fast with one clear line; Run() is the event loop on the
// calling thread until Stop() (safe from a signal handler's thread).
class Agent {
 public:
  explicit Agent(AgentConfig config);
  ~Agent();

  absl::Status Init();
  void Run();
  void Stop() { stop_ = true; }
  // Re-read the policy from --config at the next housekeeping (SIGHUP; safe
  // from a signal handler).
  void RequestReload() {
    if (policy_ != nullptr) policy_->RequestReload();
  }

 private:
  void OnTokenOpen(const tw_token_open& event);
  // Reads the hooks' folded reopen counts and adds them to their findings.
  void CreditReopens();
  void Credit(const detect::TokenRead& credit);
  void ApplyInventoryDelta(const tokens::InventoryDelta& delta);
  void Export(const v1::Finding& finding);
  // Counts, logs and exports a new finding.
  void Raise(const v1::Finding& finding);
  void Housekeeping();
  void ReportFanotifyOverflows();
  absl::Status EnsureStateDir();

  AgentConfig config_;
  std::string agent_id_;
  std::string hook_mode_;
  std::atomic<bool> stop_{false};
  absl::Time next_table_count_ = absl::InfinitePast();
  uint64_t fanotify_overflows_reported_ = 0;  // covered by TW090 findings so far
  absl::Time last_overflow_report_ = absl::InfinitePast();

  process::BootClock clock_;
  process::ProcReader proc_;
  std::unique_ptr<metrics::AgentMetrics> metrics_;
  metrics::Health health_;
  std::unique_ptr<metrics::HttpServer> http_;
  std::unique_ptr<probes::ProcessProbe> processes_;
  std::unique_ptr<probes::TokenHooks> probe_;  // token-open hooks of the chosen mode
  std::unique_ptr<TokenUse> use_;  // read -> use: connections, argv tokens
  std::unique_ptr<k8s::CgroupResolver> cgroups_;
  std::unique_ptr<process::EntrypointResolver> entrypoints_;
  std::unique_ptr<process::LineageBuilder> lineage_;
  std::unique_ptr<tokens::TokenInventory> inventory_;
  std::unique_ptr<tokens::InventoryWatcher> watcher_;
  std::unique_ptr<detect::PolicyRuntime> policy_;
  uint64_t policy_successes_seen_ = 0;  // reloads already counted in metrics
  uint64_t policy_failures_seen_ = 0;  // before detector_: it points into it
  std::unique_ptr<detect::Detector> detector_;
  // Rereads the hooks folded -> the read each repeats (event thread).
  std::unique_ptr<ReopenLedger> reopens_;
  // TW090 from the kernel's loss counters (housekeeping thread).
  std::unique_ptr<detect::SensorLossReporter> sensor_loss_;
  // Why the kubelet root cannot be read ("" when it can), as last logged.
  std::string inventory_problem_;
  std::unique_ptr<exporting::JsonLinesWriter> json_;
  std::unique_ptr<exporting::CollectorClient> collector_;
  // Keeps the collector's copy of the learned profiles current (with --collector).
  std::unique_ptr<exporting::ProfileUploader> profile_uploader_;
  absl::Mutex watch_mu_;  // serializes tokens-map updates from the watcher
  // pod uid -> (namespace, name), from the inventoried tokens' claims.
  absl::Mutex pods_mu_;
  absl::flat_hash_map<std::string, std::pair<std::string, std::string>> pod_names_
      ABSL_GUARDED_BY(pods_mu_);
  absl::flat_hash_map<std::string, std::string> pod_accounts_ ABSL_GUARDED_BY(pods_mu_);
  void NamePod(process::ProcessView* view);
  // Policy or learned baseline: may this container process call the API
  // server? (TW020 otherwise.)
  bool ApiserverContactExpected(const process::ProcessView& view);
};

}  // namespace tokenwatch::agent
