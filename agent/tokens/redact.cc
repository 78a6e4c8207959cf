#include "agent/tokens/redact.h"

#include <openssl/evp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"

namespace tokenwatch::tokens {
namespace {

// Shortest segments we take for a real token. "eyJhbGciOi" ({"alg":) alone is 10 characters, and
// the smallest real signature (HS256) is 43; shorter dotted runs starting with eyJ are far more
// likely to be something else than a usable token.
constexpr size_t kMinHeader = 10;
constexpr size_t kMinPayload = 10;
constexpr size_t kMinSignature = 16;

bool IsBase64UrlChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
}

size_t SegmentEnd(absl::string_view text, size_t pos) {
  while (pos < text.size() && IsBase64UrlChar(text[pos])) ++pos;
  return pos;
}

// If a JWT starts at `start` (which holds "eyJ"), returns its length, else 0. Sets *skip to how
// far the caller may jump when there is no match: no shorter candidate can start inside the first
// segment, because it would end at the same place with a shorter header.
size_t MatchJwt(absl::string_view text, size_t start, size_t* skip) {
  size_t h_end = SegmentEnd(text, start);
  *skip = h_end - start;
  if (h_end - start < kMinHeader || h_end >= text.size() || text[h_end] != '.') return 0;
  size_t p_end = SegmentEnd(text, h_end + 1);
  if (p_end - (h_end + 1) < kMinPayload || p_end >= text.size() || text[p_end] != '.') return 0;
  size_t s_end = SegmentEnd(text, p_end + 1);
  if (s_end - (p_end + 1) < kMinSignature) return 0;
  // A fourth segment makes it something else (a JWE has five); take it anyway: over-redacting a
  // dotted base64url blob costs nothing, leaking a token does.
  return s_end - start;
}

template <typename OnMatch, typename OnText>
void ScanJwts(absl::string_view text, OnMatch on_match, OnText on_text) {
  size_t copied = 0;
  size_t pos = 0;
  while (true) {
    size_t found = text.find("eyJ", pos);
    if (found == absl::string_view::npos) break;
    size_t skip = 0;
    size_t len = MatchJwt(text, found, &skip);
    if (len == 0) {
      pos = found + (skip > 0 ? skip : 1);
      continue;
    }
    on_text(text.substr(copied, found - copied));
    on_match(text.substr(found, len));
    copied = pos = found + len;
  }
  on_text(text.substr(copied));
}

}  // namespace

std::string RedactJwts(absl::string_view text, std::vector<std::string>* digests) {
  std::string out;
  out.reserve(text.size());
  ScanJwts(
      text,
      [&](absl::string_view jwt) {
        out.append(kRedactedJwt.data(), kRedactedJwt.size());
        if (digests != nullptr) digests->push_back(TokenDigest(jwt));
      },
      [&](absl::string_view plain) { out.append(plain.data(), plain.size()); });
  return out;
}

bool ContainsJwt(absl::string_view text) {
  bool found = false;
  ScanJwts(
      text, [&](absl::string_view) { found = true; }, [](absl::string_view) {});
  return found;
}

std::string TokenDigest(absl::string_view token) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (EVP_Digest(token.data(), token.size(), md, &md_len, EVP_sha256(), nullptr) != 1) {
    // Only on allocation failure inside OpenSSL. An empty digest matches no inventoried token.
    return "";
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(md), static_cast<size_t>(md_len)));
}

}  // namespace tokenwatch::tokens
