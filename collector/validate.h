#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "tokenwatch/v1/finding.pb.h"

namespace tokenwatch::collector {

// Bounds on what one agent may make us store; a finding beyond them is refused whole.
inline constexpr size_t kMaxStringBytes = 4096;
inline constexpr int kMaxArgv = 256;
inline constexpr int kMaxAncestors = 64;
inline constexpr int kMaxConnections = 1024;
inline constexpr int kMaxListEntries = 64;  // mitre ids, audiences
// How far in the future a finding's time may lie: agents' clocks drift, but a finding from
// next year is a bug or a forgery and would sort above everything real.
inline constexpr absl::Duration kMaxClockSkew = absl::Hours(24);

// True when `id` is a UUID in the 8-4-4-4-12 hex form (either case).
bool IsUuid(absl::string_view id);

// True when `rule_id` is "TW" followed by three digits.
bool IsRuleId(absl::string_view rule_id);

// Checks a finding an agent sent before it is stored. The error is InvalidArgument and names the
// offending field, e.g. "finding.process.argv[3]: longer than 4096 bytes".
absl::Status ValidateFinding(const tokenwatch::v1::Finding& finding, absl::Time now);

}  // namespace tokenwatch::collector
