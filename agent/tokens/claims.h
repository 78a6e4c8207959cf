#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tokenwatch::tokens {

// What a Kubernetes service-account token says about its owner. Holds no part of the token
// itself, so it may be logged and exported freely.
struct Claims {
  std::string issuer;
  // kubernetes.io.namespace (bound) or kubernetes.io/serviceaccount/namespace (legacy).
  std::string namespace_name;
  // kubernetes.io.pod.name: bound tokens only, and only those bound to a pod.
  std::string pod_name;
  // kubernetes.io.pod.uid.
  std::string pod_uid;
  // kubernetes.io.serviceaccount.name or kubernetes.io/serviceaccount/service-account.name.
  std::string service_account;
  // exp. Legacy secret tokens never expire.
  std::optional<absl::Time> expiry;
  // aud, whether the token carried it as a string or as an array.
  std::vector<std::string> audiences;
  // True for a legacy secret-based token (no expiry, no pod binding).
  bool legacy = false;
};

// The largest token we accept; the kubelet's are ~1 KiB, cloud identity tokens a few KiB.
inline constexpr size_t kMaxJwtBytes = 64 * 1024;

// Parses the claims of a Kubernetes-issued service-account JWT (header.payload.signature,
// base64url). No signature check (the agent has no key and needs none). Rejects anything that
// is not a JWT or carries neither the bound nor the legacy Kubernetes claims. Error messages
// never contain the token or any part of it.
absl::StatusOr<Claims> ParseServiceAccountJwt(absl::string_view jwt);

}  // namespace tokenwatch::tokens
