#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "agent/detect/detector.h"
#include "agent/export/collector_client.h"
#include "agent/export/json_lines.h"
#include "agent/k8s/cgroup.h"
#include "agent/main/config.h"
#include "agent/metrics/agent_metrics.h"
#include "agent/metrics/http_server.h"
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

 private:
  void OnTokenOpen(const tw_token_open& event);
  void ApplyInventoryDelta(const tokens::InventoryDelta& delta);
  void Export(const v1::Finding& finding);
  void Housekeeping();
  absl::Status EnsureStateDir();

  AgentConfig config_;
  std::string agent_id_;
  std::string hook_mode_;
  std::atomic<bool> stop_{false};
  absl::Time next_table_count_ = absl::InfinitePast();

  process::BootClock clock_;
  process::ProcReader proc_;
  std::unique_ptr<metrics::AgentMetrics> metrics_;
  metrics::Health health_;
  std::unique_ptr<metrics::HttpServer> http_;
  std::unique_ptr<probes::ProcessProbe> processes_;
  std::unique_ptr<probes::TokenOpenProbe> probe_;
  std::unique_ptr<k8s::CgroupResolver> cgroups_;
  std::unique_ptr<process::EntrypointResolver> entrypoints_;
  std::unique_ptr<process::LineageBuilder> lineage_;
  std::unique_ptr<tokens::TokenInventory> inventory_;
  std::unique_ptr<tokens::InventoryWatcher> watcher_;
  std::unique_ptr<detect::Detector> detector_;
  std::unique_ptr<exporting::JsonLinesWriter> json_;
  std::unique_ptr<exporting::CollectorClient> collector_;
  absl::Mutex watch_mu_;  // serializes tokens-map updates from the watcher
  // pod uid -> (namespace, name), from the inventoried tokens' claims.
  absl::Mutex pods_mu_;
  absl::flat_hash_map<std::string, std::pair<std::string, std::string>> pod_names_
      ABSL_GUARDED_BY(pods_mu_);
  void NamePod(process::ProcessView* view);
};

}  // namespace tokenwatch::agent
