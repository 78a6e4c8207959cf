#pragma once

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace tokenwatch::tokens {

inline constexpr absl::string_view kRedactedJwt = "<redacted-jwt>";

// Replaces every JWT-shaped substring (three base64url segments joined by dots, the first
// starting with "eyJ", long enough to be a real token) with kRedactedJwt. Also returns, via the
// optional out-param, the SHA-256 hex digests of each JWT it removed (so the caller can match
// them against inventoried tokens, rule TW012, without keeping the token). Digests are in the
// order the tokens appeared; a token that appears twice yields its digest twice.
std::string RedactJwts(absl::string_view text, std::vector<std::string>* digests = nullptr);

// True if RedactJwts would change `text`. Cheap enough for a hot path.
bool ContainsJwt(absl::string_view text);

// SHA-256 hex (lower case) of a token's bytes.
std::string TokenDigest(absl::string_view token);

}  // namespace tokenwatch::tokens
