#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tokenwatch::k8s {

// An IP endpoint in binary form (what the kernel compares) and as text.
struct IpEndpoint {
  int family = 0;         // AF_INET or AF_INET6
  uint8_t addr[16] = {};  // network order; IPv4 in the first 4 bytes
  uint16_t port = 0;      // host order
  std::string text;       // "10.96.0.1:443", "[fd00::1]:6443"

  bool operator==(const IpEndpoint& o) const;
};

// Parses "1.2.3.4:443" or "[fd00::1]:443" (numeric only).
absl::StatusOr<IpEndpoint> ParseIpEndpoint(const std::string& host_port);

// Where the API server is, found without talking to it: the --apiserver
// flags, else KUBERNETES_SERVICE_HOST/PORT from the environment plus the
// server: URL of the kubelet's kubeconfig files. Host names are resolved
// (call Resolve() again every minute: load balancers move).
class ApiServerDiscovery {
 public:
  struct Options {
    std::vector<std::string> flags;  // --apiserver HOST:PORT values
    std::string service_host;        // $KUBERNETES_SERVICE_HOST
    std::string service_port;        // $KUBERNETES_SERVICE_PORT
    std::vector<std::string> kubeconfigs = {"/etc/kubernetes/kubelet.conf"};
  };
  explicit ApiServerDiscovery(Options options) : options_(std::move(options)) {}

  // The HOST:PORT names to resolve, and where each came from.
  std::vector<std::pair<std::string, std::string>> Sources() const;
  // Resolves every source; names that do not resolve are skipped (the
  // result says which in `errors`).
  std::vector<IpEndpoint> Resolve(std::vector<std::string>* errors = nullptr) const;

 private:
  Options options_;
};

// The host:port of the first cluster's server: in a kubeconfig file
// ("https://api.example:6443" -> "api.example:6443"; port 443 if absent).
absl::StatusOr<std::string> KubeconfigServer(const std::string& path);

// Whether `ip` lies in one of the CIDR ranges ("10.0.0.0/8", "fd00::/8").
bool InRanges(const IpEndpoint& ip, const std::vector<std::string>& cidrs);

// Ranges that count as inside the cluster by default: private, loopback,
// link-local and unique-local addresses.
const std::vector<std::string>& DefaultClusterRanges();

}  // namespace tokenwatch::k8s
