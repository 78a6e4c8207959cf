#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/status/statusor.h"
#include "collector/store.h"
#include "tokenwatch/v1/collector.pb.h"
#include "tokenwatch/v1/finding.pb.h"

namespace tokenwatch::collector {

// Bounds on what one agent may make us store; a finding beyond them is refused whole.
inline constexpr size_t kMaxStringBytes = 4096;
inline constexpr int kMaxArgv = 256;
inline constexpr int kMaxAncestors = 64;
inline constexpr int kMaxConnections = 1024;
inline constexpr int kMaxListEntries = 64;  // mitre ids, severity reasons, audiences
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

// Checks the Hello that opens a Report stream: node and agent id present, sizes bounded.
absl::Status ValidateHello(const tokenwatch::v1::Hello& hello);

// Checks one message of a Report stream on its own (its place in the stream is the service's
// business): a Hello, a sequenced finding, or a gap.
absl::Status ValidateReportRequest(const tokenwatch::v1::ReportRequest& request, absl::Time now);

// Parses a serialized ReportRequest and checks it: what the collector does with every message
// an agent sends. InvalidArgument for bytes that are not a ReportRequest.
absl::StatusOr<tokenwatch::v1::ReportRequest> ParseReportRequest(absl::string_view bytes,
                                                                absl::Time now);

// Turns ListFindings filters into a store query; InvalidArgument for out-of-range values.
absl::StatusOr<FindingQuery> QueryFromRequest(const tokenwatch::v1::ListFindingsRequest& request);
absl::StatusOr<FindingQuery> QueryFromRequest(const tokenwatch::v1::WatchFindingsRequest& request);

}  // namespace tokenwatch::collector
