#pragma once

#include "agent/metrics/agent_metrics.h"
#include "collector/collector_metrics.h"

namespace tokenwatch::metrics::testing {

// Touches every agent metric with the label values the agent uses, so that
// tests and `promtool check metrics` see each series.
inline void FillAgentMetrics(AgentMetrics* m) {
  m->KernelRecord("token_open");
  m->TokenOpens("reported", 1);
  m->TokenOpens("folded", 599);
  m->SetFanotifyEvents(600);
  m->KernelDrops("ring_full", 7);
  m->Finding("TW001", "high");
  m->Finding("TW090", "high");
  m->SetFolded(4);
  m->SetTokensWatched(12);
  m->SetProcessesTracked(300);
  m->SetInventoryErrors("malformed", 1);
  m->SetInventoryErrors("unreadable", 0);
  m->SetHookMode("tracepoint");
  m->SetProbeAttached("syscalls/sys_exit_openat", true);
  m->SetExport(2, 10, 8, 1, 0, true);
  m->ProcessingError("token_lookup");
  m->SetSpoolBytes(4096);
  m->SetProfileUploads(3, 1);
  m->PolicyReload(true);
  m->SetApiServersWatched(0);
  m->ObserveDetectionLatency(0.012);
  m->SetReady(true);
}

inline void FillCollectorMetrics(collector::CollectorMetrics* m) {
  m->FindingReceived();
  m->FindingReceived();
  m->Rejected(collector::CollectorMetrics::kInvalid);
  m->FindingCommitted(true, absl::Milliseconds(3));
  m->FindingCommitted(false, absl::Milliseconds(1));
  m->AgentConnected();
  m->ObserveRequest("ListFindings", absl::Milliseconds(2));
}

}  // namespace tokenwatch::metrics::testing
