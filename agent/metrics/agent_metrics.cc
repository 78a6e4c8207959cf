#include "agent/metrics/agent_metrics.h"

namespace tokenwatch::metrics {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

namespace {

// From a millisecond (the ring is polled every 100 ms, records batch) to the
// 10 s beyond which a detection is late enough to page about.
prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

}  // namespace

AgentMetrics::AgentMetrics(const std::string& version, const std::string& git_commit,
                           const std::string& kernel_release)
    : registry_(std::make_shared<prometheus::Registry>()),
      records_(BuildCounter()
                   .Name("tokenwatch_kernel_records_total")
                   .Help("Records received from the kernel, by type.")
                   .Register(*registry_)),
      token_opens_(BuildCounter()
                       .Name("tokenwatch_token_opens_total")
                       .Help("Token opens the hooks saw, by outcome: reported (a record of its "
                             "own) or folded (a reread by the same process within the dedup "
                             "window, counted without a record and added to its finding).")
                       .Register(*registry_)),
      fanotify_events_(&BuildCounter()
                            .Name("tokenwatch_fanotify_events_total")
                            .Help("Events read from the fanotify group (fanotify hook mode), "
                                  "before rereads are folded.")
                            .Register(*registry_)
                            .Add({})),
      drops_(BuildCounter()
                 .Name("tokenwatch_kernel_drops_total")
                 .Help("Events the kernel side lost, by reason (ring_full, proc_table_update_failed, "
                       "proc_table_evicted).")
                 .Register(*registry_)),
      findings_(BuildCounter()
                    .Name("tokenwatch_findings_total")
                    .Help("Findings raised, by rule and severity (folded repeats not counted).")
                    .Register(*registry_)),
      folded_(&BuildCounter()
                   .Name("tokenwatch_findings_folded_total")
                   .Help("Events folded into an earlier identical finding.")
                   .Register(*registry_)
                   .Add({})),
      tokens_watched_(&BuildGauge()
                           .Name("tokenwatch_tokens_watched")
                           .Help("Token files in the inventory and in the kernel's tokens map.")
                           .Register(*registry_)
                           .Add({})),
      processes_tracked_(&BuildGauge()
                              .Name("tokenwatch_processes_tracked")
                              .Help("Live processes in the kernel's process table.")
                              .Register(*registry_)
                              .Add({})),
      inventory_errors_(BuildCounter()
                            .Name("tokenwatch_inventory_errors_total")
                            .Help("Token candidates skipped, by reason (malformed, unreadable).")
                            .Register(*registry_)),
      hook_mode_(BuildGauge()
                     .Name("tokenwatch_hook_mode_info")
                     .Help("The hook mode in use (label mode), value 1.")
                     .Register(*registry_)),
      probe_attached_(BuildGauge()
                          .Name("tokenwatch_probe_attached")
                          .Help("1 when the probe is attached, by probe.")
                          .Register(*registry_)),
      queue_depth_(&BuildGauge()
                        .Name("tokenwatch_export_queue_depth")
                        .Help("Findings waiting for the collector's ack.")
                        .Register(*registry_)
                        .Add({})),
      sent_(&BuildCounter()
                 .Name("tokenwatch_export_sent_total")
                 .Help("Findings sent to the collector (re-sends included).")
                 .Register(*registry_)
                 .Add({})),
      acked_(&BuildCounter()
                  .Name("tokenwatch_export_acked_total")
                  .Help("Findings the collector acked as stored.")
                  .Register(*registry_)
                  .Add({})),
      send_failures_(&BuildCounter()
                          .Name("tokenwatch_export_send_failures_total")
                          .Help("Collector streams that broke or could not be opened.")
                          .Register(*registry_)
                          .Add({})),
      export_dropped_(&BuildCounter()
                           .Name("tokenwatch_export_dropped_total")
                           .Help("Findings dropped unacked because the export queue was full.")
                           .Register(*registry_)
                           .Add({})),
      connected_(&BuildGauge()
                      .Name("tokenwatch_collector_connected")
                      .Help("1 while a stream to the collector is open.")
                      .Register(*registry_)
                      .Add({})),
      errors_(BuildCounter()
                  .Name("tokenwatch_processing_errors_total")
                  .Help("Events the agent could not process, by stage.")
                  .Register(*registry_)),
      spool_bytes_(&BuildGauge()
                        .Name("tokenwatch_export_spool_bytes")
                        .Help("Bytes of the on-disk delivery spool.")
                        .Register(*registry_)
                        .Add({})),
      profile_uploads_(BuildCounter()
                           .Name("tokenwatch_profile_uploads_total")
                           .Help("Learned-profile uploads to the collector, by result: ok "
                                 "(stored) or failed (refused, or the call failed).")
                           .Register(*registry_)),
      policy_reloads_(&BuildCounter()
                           .Name("tokenwatch_policy_reloads_total")
                           .Help("Policy loads and reloads attempted.")
                           .Register(*registry_)
                           .Add({})),
      policy_reload_failures_(&BuildCounter()
                                   .Name("tokenwatch_policy_reload_failures_total")
                                   .Help("Policy loads refused (the previous policy stays).")
                                   .Register(*registry_)
                                   .Add({})),
      apiservers_watched_(&BuildGauge()
                               .Name("tokenwatch_apiserver_addresses_watched")
                               .Help("API server addresses the agent watches connections to.")
                               .Register(*registry_)
                               .Add({})),
      detection_latency_(&BuildHistogram()
                              .Name("tokenwatch_detection_latency_seconds")
                              .Help("Kernel timestamp of a token read to its finding handed to "
                                    "the exporters.")
                              .Register(*registry_)
                              .Add({}, LatencyBuckets())),
      ready_(&BuildGauge()
                  .Name("tokenwatch_ready")
                  .Help("1 when /readyz answers 200 (probes attached, inventory readable).")
                  .Register(*registry_)
                  .Add({})) {
  // Both outcomes from the start: a fold ratio is computable from the first scrape.
  for (const char* outcome : {"reported", "folded"}) token_opens_.Add({{"outcome", outcome}});
  // Every drop reason exists from the start, so that increase() and the
  // alerting rules see the first loss rather than a series appearing.
  for (const char* reason : {"ring_full", "fanotify_overflow", "proc_table_update_failed",
                             "proc_table_evicted"}) {
    drops_.Add({{"reason", reason}});
  }
  // Every record type too: in fanotify mode no token_open record ever comes,
  // and a rate over a series that is absent reads as "no data", not 0.
  for (const char* type : {"token_open", "connect", "argv_token"}) records_.Add({{"type", type}});
  // Both results from the start, so that an alert on failed uploads sees the first one.
  for (const char* result : {"ok", "failed"}) profile_uploads_.Add({{"result", result}});
  BuildGauge()
      .Name("tokenwatch_build_info")
      .Help("Build and kernel of this agent (labels), value 1.")
      .Register(*registry_)
      .Add({{"version", version}, {"git_commit", git_commit}, {"kernel_release", kernel_release}})
      .Set(1);
}

void AgentMetrics::RaiseTo(prometheus::Counter& c, uint64_t value) {
  double current = c.Value();
  if (static_cast<double>(value) > current) c.Increment(static_cast<double>(value) - current);
}

void AgentMetrics::KernelDrops(const std::string& reason, uint64_t value) {
  RaiseTo(drops_.Add({{"reason", reason}}), value);
}

void AgentMetrics::SetFolded(uint64_t value) { RaiseTo(*folded_, value); }

void AgentMetrics::SetInventoryErrors(const std::string& reason, uint64_t value) {
  RaiseTo(inventory_errors_.Add({{"reason", reason}}), value);
}

void AgentMetrics::SetHookMode(const std::string& mode) { hook_mode_.Add({{"mode", mode}}).Set(1); }

void AgentMetrics::SetExport(uint64_t queue_depth, uint64_t sent, uint64_t acked,
                             uint64_t failures, uint64_t dropped, bool connected) {
  queue_depth_->Set(static_cast<double>(queue_depth));
  RaiseTo(*sent_, sent);
  RaiseTo(*acked_, acked);
  RaiseTo(*send_failures_, failures);
  RaiseTo(*export_dropped_, dropped);
  connected_->Set(connected ? 1 : 0);
}

void AgentMetrics::SetProfileUploads(uint64_t ok, uint64_t failed) {
  RaiseTo(profile_uploads_.Add({{"result", "ok"}}), ok);
  RaiseTo(profile_uploads_.Add({{"result", "failed"}}), failed);
}

}  // namespace tokenwatch::metrics
