#include "agent/detect/sensor_findings.h"

#include "absl/strings/str_cat.h"
#include "agent/detect/finding_builder.h"

namespace tokenwatch::detect {

v1::Finding BuildSensorEventsLostFinding(const std::string& node, const std::string& hook_mode,
                                         const SensorLoss& lost, absl::Time first,
                                         absl::Time now) {
  v1::Finding f;
  f.set_id(NewUuid());
  f.set_node(node);
  *f.mutable_time() = ToTimestamp(first);
  *f.mutable_last_seen() = ToTimestamp(now < first ? first : now);
  f.set_count(lost.total());
  f.set_rule_id(kSensorEventsLostRuleId);
  f.set_rule_name(kSensorEventsLostRuleName);
  f.set_severity(v1::SEVERITY_HIGH);
  // Flooding a sensor until it drops events is indicator blocking.
  f.add_mitre("T1562.006");
  f.set_hook_mode(hook_mode);
  f.set_summary(absl::StrCat(
      "the agent's kernel side lost ", lost.total(), " events (", lost.ring_full,
      " token reads did not fit in the ring buffer, ", lost.proc_table_update_failed,
      " processes were refused by the process table); token reads in that window may have gone "
      "unseen"));
  return f;
}

std::optional<v1::Finding> SensorLossReporter::Observe(const SensorLoss& totals, absl::Time now) {
  // The counters only reset when the probes are reloaded: start over from them.
  if (totals.ring_full < reported_.ring_full ||
      totals.proc_table_update_failed < reported_.proc_table_update_failed) {
    reported_ = totals;
    first_unreported_ = absl::InfinitePast();
    return std::nullopt;
  }
  SensorLoss pending{totals.ring_full - reported_.ring_full,
                     totals.proc_table_update_failed - reported_.proc_table_update_failed};
  if (pending.total() == 0) return std::nullopt;
  if (first_unreported_ == absl::InfinitePast()) first_unreported_ = now;
  if (now - last_report_ < min_interval_) return std::nullopt;
  v1::Finding finding =
      BuildSensorEventsLostFinding(node_, hook_mode_, pending, first_unreported_, now);
  reported_ = totals;
  last_report_ = now;
  first_unreported_ = absl::InfinitePast();
  return finding;
}

}  // namespace tokenwatch::detect
