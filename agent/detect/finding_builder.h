#pragma once

#include <string>

#include "agent/detect/token_read.h"
#include "agent/process/process_view.h"
#include "agent/tokens/inventory.h"
#include "tokenwatch/v1/finding.pb.h"

namespace tokenwatch::detect {

// Conversions from the agent's types to the tokenwatch.v1 proto. Pure
// functions: no clock, no I/O.
void FillProcess(const std::string& node, const process::ProcessView& view,
                 const tokens::TokenInfo* token, v1::Process* out);
void FillToken(const tokens::TokenInfo& token, v1::Token* out);
std::string OpenFlagsText(uint32_t flags);
google::protobuf::Timestamp ToTimestamp(absl::Time time);
absl::Time FromTimestamp(const google::protobuf::Timestamp& ts);

// A new random (version 4) UUID, lower-case.
std::string NewUuid();

// Builds a token-read finding (count 1, time = last_seen = read.time).
v1::Finding BuildTokenReadFinding(const std::string& node, const std::string& hook_mode,
                                  const TokenRead& read, const std::string& rule_id,
                                  const std::string& rule_name, v1::Severity severity,
                                  const std::string& summary);

}  // namespace tokenwatch::detect
