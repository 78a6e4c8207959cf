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
// A finding's own times (time, last_seen) lie in [kEarliestSaneTime, now + kMaxClockSkew]; the
// other times in it need only be valid Timestamps (common/wire_time.h).

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

// The bytes of the Finding inside a serialized ReportRequest{finding: SequencedFinding{...}},
// when `request` is exactly that one top-level field and the finding field occurs once in it:
// those bytes then parse to the very Finding that ParseFromString produced (and that was
// validated), so the collector can store what the agent sent instead of serialising it again.
// Empty for any other shape, e.g. a field repeated (protobuf merges repeats, so the stored
// bytes would hold only part of it) or a trailing field; the caller then re-serialises.
// Unknown fields inside SequencedFinding are skipped: they do not change the finding.
absl::string_view FindingBytesIn(absl::string_view request);

// Turns ListFindings filters into a store query; InvalidArgument for out-of-range values.
absl::StatusOr<FindingQuery> QueryFromRequest(const tokenwatch::v1::ListFindingsRequest& request);
absl::StatusOr<FindingQuery> QueryFromRequest(const tokenwatch::v1::WatchFindingsRequest& request);

}  // namespace tokenwatch::collector
