#include "agent/tokens/claims.h"

#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "openssl/crypto.h"

namespace tokenwatch::tokens {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

constexpr absl::string_view kBoundClaim = "kubernetes.io";
constexpr absl::string_view kLegacyPrefix = "kubernetes.io/serviceaccount/";

// Decoded token parts hold secret material: wipe them before the memory is freed.
class SecretBuffer {
 public:
  SecretBuffer() = default;
  SecretBuffer(const SecretBuffer&) = delete;
  SecretBuffer& operator=(const SecretBuffer&) = delete;
  ~SecretBuffer() {
    if (!data_.empty()) OPENSSL_cleanse(data_.data(), data_.size());
  }
  std::string* get() { return &data_; }
  const std::string& str() const { return data_; }

 private:
  std::string data_;
};

// RFC 7515 forbids padding, but some issuers pad anyway; up to two trailing '=' are accepted.
bool IsBase64UrlSegment(absl::string_view s) {
  for (int i = 0; i < 2 && !s.empty() && s.back() == '='; ++i) s.remove_suffix(1);
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
      return false;
    }
  }
  return true;
}

// Decodes one base64url segment into a JSON object. Statuses name the segment, never its text:
// protobuf's JSON errors quote the input, so they are dropped.
absl::Status DecodeJsonSegment(absl::string_view segment, absl::string_view what, Struct* out) {
  SecretBuffer json;
  if (!absl::WebSafeBase64Unescape(segment, json.get())) {
    return absl::InvalidArgumentError(absl::StrCat("JWT ", what, " is not valid base64url"));
  }
  absl::string_view trimmed = absl::StripAsciiWhitespace(json.str());
  if (trimmed.empty() || trimmed.front() != '{') {
    return absl::InvalidArgumentError(absl::StrCat("JWT ", what, " is not a JSON object"));
  }
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  if (!google::protobuf::util::JsonStringToMessage(
           google::protobuf::StringPiece(trimmed.data(), trimmed.size()), out, options)
           .ok()) {
    return absl::InvalidArgumentError(absl::StrCat("JWT ", what, " is not valid JSON"));
  }
  return absl::OkStatus();
}

std::string StringField(const Struct& s, absl::string_view key) {
  auto it = s.fields().find(std::string(key));
  if (it == s.fields().end() || it->second.kind_case() != Value::kStringValue) return "";
  return it->second.string_value();
}

const Struct* StructField(const Struct& s, absl::string_view key) {
  auto it = s.fields().find(std::string(key));
  if (it == s.fields().end() || it->second.kind_case() != Value::kStructValue) return nullptr;
  return &it->second.struct_value();
}

std::vector<std::string> Audiences(const Struct& payload) {
  std::vector<std::string> out;
  auto it = payload.fields().find("aud");
  if (it == payload.fields().end()) return out;
  const Value& aud = it->second;
  if (aud.kind_case() == Value::kStringValue) {
    out.push_back(aud.string_value());
  } else if (aud.kind_case() == Value::kListValue) {
    for (const Value& v : aud.list_value().values()) {
      if (v.kind_case() == Value::kStringValue) out.push_back(v.string_value());
    }
  }
  return out;
}

std::optional<absl::Time> Expiry(const Struct& payload) {
  auto it = payload.fields().find("exp");
  if (it == payload.fields().end() || it->second.kind_case() != Value::kNumberValue) {
    return std::nullopt;
  }
  double exp = it->second.number_value();
  // Reject values absl::FromUnixSeconds cannot represent meaningfully.
  if (!std::isfinite(exp) || exp < 0 || exp > 1e15) return std::nullopt;
  return absl::FromUnixSeconds(static_cast<int64_t>(exp));
}

}  // namespace

absl::StatusOr<Claims> ParseServiceAccountJwt(absl::string_view jwt) {
  if (jwt.size() > kMaxJwtBytes) return absl::InvalidArgumentError("JWT is too large");
  std::vector<absl::string_view> parts = absl::StrSplit(jwt, '.');
  if (parts.size() != 3) {
    return absl::InvalidArgumentError("not a JWT: expected three dot-separated segments");
  }
  for (absl::string_view part : parts) {
    if (!IsBase64UrlSegment(part)) {
      return absl::InvalidArgumentError("not a JWT: a segment is empty or not base64url");
    }
  }

  Struct header;
  if (absl::Status s = DecodeJsonSegment(parts[0], "header", &header); !s.ok()) return s;
  if (StringField(header, "alg").empty()) {
    return absl::InvalidArgumentError("JWT header has no alg");
  }
  Struct payload;
  if (absl::Status s = DecodeJsonSegment(parts[1], "payload", &payload); !s.ok()) return s;

  Claims claims;
  claims.issuer = StringField(payload, "iss");
  claims.audiences = Audiences(payload);
  claims.expiry = Expiry(payload);

  if (const Struct* k8s = StructField(payload, kBoundClaim); k8s != nullptr) {
    // Bound (TokenRequest) token: claims nest under "kubernetes.io".
    claims.namespace_name = StringField(*k8s, "namespace");
    if (const Struct* pod = StructField(*k8s, "pod"); pod != nullptr) {
      claims.pod_name = StringField(*pod, "name");
      claims.pod_uid = StringField(*pod, "uid");
    }
    if (const Struct* sa = StructField(*k8s, "serviceaccount"); sa != nullptr) {
      claims.service_account = StringField(*sa, "name");
    }
  } else {
    // Legacy secret token: flat "kubernetes.io/serviceaccount/..." claims.
    claims.namespace_name = StringField(payload, absl::StrCat(kLegacyPrefix, "namespace"));
    claims.service_account =
        StringField(payload, absl::StrCat(kLegacyPrefix, "service-account.name"));
    claims.legacy = !claims.namespace_name.empty() || !claims.service_account.empty();
  }
  if (claims.namespace_name.empty() || claims.service_account.empty()) {
    return absl::InvalidArgumentError(
        "JWT carries no Kubernetes service-account claims (namespace and service account)");
  }
  return claims;
}

}  // namespace tokenwatch::tokens
