#include "agent/detect/sensor_findings.h"

#include "collector/validate.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tokenwatch::detect {
namespace {

using ::testing::HasSubstr;

const absl::Time kT0 = absl::FromUnixSeconds(1700000000);

TEST(SensorLossReporter, NothingWhileTheCountersStayAtZero) {
  SensorLossReporter r("node-a", "tracepoint");
  EXPECT_FALSE(r.Observe(SensorLoss{}, kT0).has_value());
  EXPECT_FALSE(r.Observe(SensorLoss{}, kT0 + absl::Minutes(5)).has_value());
}

TEST(SensorLossReporter, TheFirstLossIsReportedAtOnceWithItsCount) {
  SensorLossReporter r("node-a", "tracepoint");
  ASSERT_FALSE(r.Observe(SensorLoss{}, kT0).has_value());
  std::optional<v1::Finding> f = r.Observe(SensorLoss{42, 3}, kT0 + absl::Seconds(1));
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->rule_id(), "TW090");
  EXPECT_EQ(f->rule_name(), "sensor-events-lost");
  EXPECT_EQ(f->severity(), v1::SEVERITY_HIGH);
  EXPECT_EQ(f->count(), 45u);
  EXPECT_EQ(f->node(), "node-a");
  EXPECT_EQ(f->hook_mode(), "tracepoint");
  EXPECT_THAT(f->summary(), HasSubstr("42 token reads did not fit in the ring buffer"));
  // The same totals again are not a new loss.
  EXPECT_FALSE(r.Observe(SensorLoss{42, 3}, kT0 + absl::Minutes(5)).has_value());
}

TEST(SensorLossReporter, ASustainedFloodYieldsOneFindingPerIntervalCountingTheNewLosses) {
  SensorLossReporter r("node-a", "tracepoint", absl::Minutes(1));
  ASSERT_TRUE(r.Observe(SensorLoss{10, 0}, kT0).has_value());
  EXPECT_FALSE(r.Observe(SensorLoss{20, 0}, kT0 + absl::Seconds(10)).has_value());
  EXPECT_FALSE(r.Observe(SensorLoss{35, 0}, kT0 + absl::Seconds(50)).has_value());
  std::optional<v1::Finding> f = r.Observe(SensorLoss{40, 0}, kT0 + absl::Seconds(61));
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->count(), 30u);
  // Its time is when the unreported loss was first seen, its last_seen now.
  EXPECT_EQ(f->time().seconds(), absl::ToUnixSeconds(kT0 + absl::Seconds(10)));
  EXPECT_EQ(f->last_seen().seconds(), absl::ToUnixSeconds(kT0 + absl::Seconds(61)));
}

TEST(SensorLossReporter, CountersThatRestartAreABaselineNotALoss) {
  SensorLossReporter r("node-a", "tracepoint", absl::ZeroDuration());
  ASSERT_TRUE(r.Observe(SensorLoss{100, 0}, kT0).has_value());
  EXPECT_FALSE(r.Observe(SensorLoss{5, 0}, kT0 + absl::Seconds(1)).has_value());
  std::optional<v1::Finding> f = r.Observe(SensorLoss{8, 0}, kT0 + absl::Seconds(2));
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->count(), 3u);
}

TEST(SensorEventsLostFinding, TheCollectorAcceptsIt) {
  v1::Finding f =
      BuildSensorEventsLostFinding("node-a", "tracepoint", SensorLoss{7, 1}, kT0, kT0);
  EXPECT_TRUE(collector::IsUuid(f.id()));
  absl::Status s = collector::ValidateFinding(f, kT0 + absl::Seconds(1));
  EXPECT_TRUE(s.ok()) << s;
}

}  // namespace
}  // namespace tokenwatch::detect
