#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "tokenwatch/v1/finding.pb.h"

namespace tokenwatch::collector::ctl {

// Parses --since: a duration back from `now` ("10m", "2h", "1h30m", "3d") or an RFC 3339 time
// ("2025-01-02T03:04:05Z").
absl::StatusOr<absl::Time> ParseSince(absl::string_view text, absl::Time now);

// Parses --severity: "low", "medium", "high" or "critical" (any case, SEVERITY_ prefix allowed).
absl::StatusOr<tokenwatch::v1::Severity> ParseSeverity(absl::string_view text);

// "critical" for SEVERITY_CRITICAL and so on; "unspecified" for anything else.
std::string SeverityName(tokenwatch::v1::Severity severity);

// Replaces control characters and invalid bytes with '?' so that attacker-chosen strings
// (argv, exe paths) cannot move the cursor or recolour an operator's terminal.
std::string Printable(absl::string_view text);

// An aligned table with a header row: TIME, NODE, RULE, SEVERITY, NAMESPACE/POD, PROCESS,
// COUNT, SUMMARY. Long cells are cut with "...". Ends with a newline; one line per finding.
std::string FormatTable(const std::vector<tokenwatch::v1::Finding>& findings);

// A finding in full: what, when, the reasons for its severity (one a line), the token's claims,
// the lineage as an indented tree from the oldest ancestor down to the actor, the access and the
// connections.
std::string FormatFinding(const tokenwatch::v1::Finding& finding);

}  // namespace tokenwatch::collector::ctl
