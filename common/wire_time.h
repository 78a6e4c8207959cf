#pragma once

#include <google/protobuf/timestamp.pb.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

// Bounds on the times an agent puts on the wire (findings, learned profiles). The agent checks
// what it sends and the collector what it accepts against the same values and with the same
// messages, so a refusal reads alike on both sides.
namespace tokenwatch {

// 2000-01-01 UTC. Nothing tokenwatch reports predates it (the project is younger); an earlier
// time is a zeroed or forged field.
inline constexpr absl::Time kEarliestSaneTime = absl::FromUnixSeconds(946684800);

// How far ahead of the receiver's clock a time may lie: agents' clocks drift, but a time from
// next year is a bug or a forgery and would sort above everything real.
inline constexpr absl::Duration kMaxClockSkew = absl::Hours(24);

// Whether `ts` is a valid google.protobuf.Timestamp: nanos in [0, 1e9) and seconds within
// years 1..9999 (where the proto3 JSON mapping and int64 nanosecond columns stop).
// InvalidArgument "<field>: nanos out of range" or "<field>: outside years 1..9999".
absl::Status ValidateTimestamp(absl::string_view field, const google::protobuf::Timestamp& ts);

// ValidateTimestamp, and the time neither before kEarliestSaneTime nor more than kMaxClockSkew
// after `now`: for times an agent observed ("<field>: before the year 2000", "<field>: more
// than 24h in the future").
absl::Status ValidateObservedTime(absl::string_view field, const google::protobuf::Timestamp& ts,
                                  absl::Time now);

}  // namespace tokenwatch
