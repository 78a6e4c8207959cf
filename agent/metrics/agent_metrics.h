#pragma once

#include <array>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace tokenwatch::metrics {

// The agent's metrics, all prefixed tokenwatch_ and listed in the README.
// Labels are bounded: rule ids, severities, reasons, probe names, never a
// pid, path or pod. Thread-safe (prometheus-cpp's metrics are atomic; the
// label maps are filled under a lock).
class AgentMetrics {
 public:
  AgentMetrics(const std::string& version, const std::string& git_commit,
               const std::string& kernel_release);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void KernelRecord(const std::string& type) { records_.Add({{"type", type}}).Increment(); }
  // Token opens the hooks saw: "reported" as a record of their own, or
  // "folded" (a reread within the dedup window, counted without a record).
  void TokenOpens(const std::string& outcome, uint64_t n) {
    if (n > 0) token_opens_.Add({{"outcome", outcome}}).Increment(static_cast<double>(n));
  }
  // Mirrors the fanotify events read so far (fanotify mode).
  void SetFanotifyEvents(uint64_t value) { RaiseTo(*fanotify_events_, value); }
  // Sets a counter that mirrors a monotonic kernel counter to `value`.
  void KernelDrops(const std::string& reason, uint64_t value);
  void Finding(const std::string& rule, const std::string& severity) {
    findings_.Add({{"rule", rule}, {"severity", severity}}).Increment();
  }
  void SetFolded(uint64_t value);
  void SetTokensWatched(double n) { tokens_watched_->Set(n); }
  void SetProcessesTracked(double n) { processes_tracked_->Set(n); }
  void SetInventoryErrors(const std::string& reason, uint64_t value);
  void SetHookMode(const std::string& mode);
  void SetProbeAttached(const std::string& probe, bool attached) {
    probe_attached_.Add({{"probe", probe}}).Set(attached ? 1 : 0);
  }
  void SetExport(uint64_t queue_depth, uint64_t sent, uint64_t acked, uint64_t failures,
                 uint64_t dropped, bool connected);
  void ProcessingError(const std::string& stage) {
    errors_.Add({{"stage", stage}}).Increment();
  }
  // Mirrors the profile uploader's counts (ProfileUploader::Stats): uploads the collector
  // stored, and calls it refused or that failed.
  void SetProfileUploads(uint64_t ok, uint64_t failed);
  // Bytes of the delivery spool on disk.
  void SetSpoolBytes(uint64_t bytes) { spool_bytes_->Set(static_cast<double>(bytes)); }
  // A policy (re)load: counted always, and as a failure when it was refused.
  void PolicyReload(bool ok) {
    policy_reloads_->Increment();
    if (!ok) policy_reload_failures_->Increment();
  }
  void SetApiServersWatched(double n) { apiservers_watched_->Set(n); }
  // Kernel timestamp of the event -> finding handed to the exporter.
  void ObserveDetectionLatency(double seconds) { detection_latency_->Observe(seconds); }
  void SetReady(bool ready) { ready_->Set(ready ? 1 : 0); }

 private:
  // Raises counter `c` to `value` (mirrors of monotonic counters kept elsewhere).
  static void RaiseTo(prometheus::Counter& c, uint64_t value);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& records_;
  prometheus::Family<prometheus::Counter>& token_opens_;
  prometheus::Counter* fanotify_events_;
  prometheus::Family<prometheus::Counter>& drops_;
  prometheus::Family<prometheus::Counter>& findings_;
  prometheus::Counter* folded_;
  prometheus::Gauge* tokens_watched_;
  prometheus::Gauge* processes_tracked_;
  prometheus::Family<prometheus::Counter>& inventory_errors_;
  prometheus::Family<prometheus::Gauge>& hook_mode_;
  prometheus::Family<prometheus::Gauge>& probe_attached_;
  prometheus::Gauge* queue_depth_;
  prometheus::Counter* sent_;
  prometheus::Counter* acked_;
  prometheus::Counter* send_failures_;
  prometheus::Counter* export_dropped_;
  prometheus::Gauge* connected_;
  prometheus::Family<prometheus::Counter>& errors_;
  prometheus::Gauge* spool_bytes_;
  prometheus::Family<prometheus::Counter>& profile_uploads_;
  prometheus::Counter* policy_reloads_;
  prometheus::Counter* policy_reload_failures_;
  prometheus::Gauge* apiservers_watched_;
  prometheus::Histogram* detection_latency_;
  prometheus::Gauge* ready_;
};

}  // namespace tokenwatch::metrics
