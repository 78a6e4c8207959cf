#pragma once

// Test helpers that lay out a node the way the kubelet does: pod directories, projected and
// secret volumes written with the atomic writer's layout, and fake service-account JWTs.
// For unprivileged unit tests and the e2e tests alike; nothing here needs root.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tokenwatch::tokens::fixture {

// Claims for MakeFakeJwt. The defaults make a bound pod token like the kubelet mounts.
struct FakeJwtOptions {
  std::string issuer = "https://kubernetes.default.svc.cluster.local";
  std::string namespace_name = "default";
  std::string pod_name = "web-0";
  std::string pod_uid = "0b5c9a3e-7f2d-4a61-9d1e-3c2b1a0f9e8d";  // empty: not bound to a pod
  std::string service_account = "default";
  std::string service_account_uid = "5d6e7f80-1a2b-4c3d-8e9f-a0b1c2d3e4f5";
  std::optional<absl::Time> expiry = absl::FromUnixSeconds(4102444800);  // 2100-01-01
  std::vector<std::string> audiences = {"https://kubernetes.default.svc.cluster.local"};
  bool audience_as_string = false;  // "aud":"x" instead of "aud":["x"]
  bool legacy = false;              // legacy secret token claims instead of bound ones
  bool kubernetes_claims = true;    // false: a generic OIDC JWT with no Kubernetes claims
};

// header {"alg":"RS256","kid":"x"}, the payload above, and a random 256-byte base64url signature.
std::string MakeFakeJwt(const FakeJwtOptions& options = {});

// Path inside the volume (may contain '/') -> file content.
using VolumeFiles = std::map<std::string, std::string>;

inline constexpr char kProjectedPlugin[] = "kubernetes.io~projected";
inline constexpr char kSecretPlugin[] = "kubernetes.io~secret";

// <root>/pods/<pod_uid>/volumes/<plugin>/<volume>
std::string VolumeDir(const std::string& root, const std::string& pod_uid,
                      const std::string& volume, const std::string& plugin = kProjectedPlugin);

// Writes (or rewrites) a volume the way the kubelet's atomic writer does: the files go into a
// new ..<timestamp> dir, a ..data_tmp symlink to it is renamed over ..data, each top-level name
// is a symlink to ..data/<name>, names no longer present are unlinked and the old timestamped
// dir is removed. Returns the new timestamped dir (the real parent of the files).
absl::StatusOr<std::string> WriteVolume(const std::string& volume_dir, const VolumeFiles& files);

absl::StatusOr<std::string> WriteProjectedVolume(const std::string& root,
                                                 const std::string& pod_uid,
                                                 const std::string& volume,
                                                 const VolumeFiles& files);
absl::StatusOr<std::string> WriteSecretVolume(const std::string& root, const std::string& pod_uid,
                                              const std::string& volume, const VolumeFiles& files);
// A token rotation: same as WriteProjectedVolume on an existing volume, spelled for the reader.
absl::StatusOr<std::string> RotateProjectedVolume(const std::string& root,
                                                  const std::string& pod_uid,
                                                  const std::string& volume,
                                                  const VolumeFiles& files);
// rm -rf <root>/pods/<pod_uid>, as the kubelet does once the pod is gone.
absl::Status RemovePod(const std::string& root, const std::string& pod_uid);

// A fresh directory under $TEST_TMPDIR or /tmp, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace tokenwatch::tokens::fixture
