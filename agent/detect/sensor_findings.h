#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "tokenwatch/v1/finding.pb.h"

namespace tokenwatch::detect {

// The finding the agent raises when its kernel side lost events: a token read
// in that window may have gone unseen, and flooding the sensor until it drops
// is how an attacker would hide one.
inline constexpr char kSensorEventsLostRuleId[] = "TW090";
inline constexpr char kSensorEventsLostRuleName[] = "sensor-events-lost";

// The kernel's loss counters, monotonic since the probes were loaded (the
// per-CPU `stats` maps, summed).
struct SensorLoss {
  // Token-open records that did not fit in the ring buffer.
  uint64_t ring_full = 0;
  // Processes the kernel's process table refused (lineage lost for them).
  uint64_t proc_table_update_failed = 0;

  uint64_t total() const { return ring_full + proc_table_update_failed; }
};

// Builds a TW090 finding for `lost` (the losses since the previous report):
// a fresh UUID, the node, time = `first` (when the loss was first seen),
// last_seen = `now`, count = events lost, severity high.
v1::Finding BuildSensorEventsLostFinding(const std::string& node, const std::string& hook_mode,
                                         const SensorLoss& lost, absl::Time first,
                                         absl::Time now);

// Turns the kernel's monotonic loss counters into TW090 findings: the first
// loss is reported at once, later ones at most once per `min_interval`, each
// finding counting what was lost since the one before, so that a sustained
// flood yields one finding a minute rather than one a second.
//
// Threading: one thread (the agent's housekeeping).
class SensorLossReporter {
 public:
  SensorLossReporter(std::string node, std::string hook_mode,
                     absl::Duration min_interval = absl::Minutes(1))
      : node_(std::move(node)), hook_mode_(std::move(hook_mode)), min_interval_(min_interval) {}

  // Called with the current counter totals; returns a finding when losses
  // are due to be reported.
  std::optional<v1::Finding> Observe(const SensorLoss& totals, absl::Time now);

 private:
  const std::string node_;
  const std::string hook_mode_;
  const absl::Duration min_interval_;
  SensorLoss reported_;  // the totals that findings raised so far cover
  absl::Time last_report_ = absl::InfinitePast();
  absl::Time first_unreported_ = absl::InfinitePast();  // InfinitePast: none pending
};

}  // namespace tokenwatch::detect
