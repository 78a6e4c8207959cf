#include "agent/k8s/apiserver.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "yaml-cpp/yaml.h"

namespace tokenwatch::k8s {
namespace {

// Splits "host:port" / "[v6]:port" into host and port text.
bool SplitHostPort(const std::string& s, std::string* host, std::string* port) {
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') return false;
    *host = s.substr(1, close - 1);
    *port = s.substr(close + 2);
    return true;
  }
  size_t colon = s.rfind(':');
  if (colon == std::string::npos) return false;
  *host = s.substr(0, colon);
  *port = s.substr(colon + 1);
  return !host->empty();
}

std::string EndpointText(int family, const uint8_t* addr, uint16_t port) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(family, addr, buf, sizeof(buf));
  return family == AF_INET6 ? absl::StrCat("[", buf, "]:", port) : absl::StrCat(buf, ":", port);
}

}  // namespace

bool IpEndpoint::operator==(const IpEndpoint& o) const {
  return family == o.family && port == o.port && std::memcmp(addr, o.addr, sizeof(addr)) == 0;
}

absl::StatusOr<IpEndpoint> ParseIpEndpoint(const std::string& host_port) {
  std::string host, port_text;
  int port = 0;
  if (!SplitHostPort(host_port, &host, &port_text) || !absl::SimpleAtoi(port_text, &port) ||
      port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", host_port, "' is not IP:PORT"));
  }
  IpEndpoint ep;
  ep.port = static_cast<uint16_t>(port);
  if (inet_pton(AF_INET, host.c_str(), ep.addr) == 1) {
    ep.family = AF_INET;
  } else if (inet_pton(AF_INET6, host.c_str(), ep.addr) == 1) {
    ep.family = AF_INET6;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("'", host, "' is not an IP address"));
  }
  ep.text = EndpointText(ep.family, ep.addr, ep.port);
  return ep;
}

absl::StatusOr<std::string> KubeconfigServer(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  const YAML::Node clusters = root["clusters"];
  if (!clusters || !clusters.IsSequence()) {
    return absl::NotFoundError(absl::StrCat(path, ": no clusters"));
  }
  for (const auto& c : clusters) {
    const YAML::Node server = c["cluster"]["server"];
    if (!server || !server.IsScalar()) continue;
    absl::string_view url = server.Scalar();
    bool https = absl::ConsumePrefix(&url, "https://");
    if (!https) absl::ConsumePrefix(&url, "http://");
    url = url.substr(0, url.find('/'));
    std::string hp(url);
    // A bare host (or [v6]) means the scheme's default port.
    bool has_port = !hp.empty() && (hp[0] == '[' ? hp.find("]:") != std::string::npos
                                                 : hp.find(':') != std::string::npos);
    if (!has_port) hp = absl::StrCat(hp, ":", https ? 443 : 80);
    return hp;
  }
  return absl::NotFoundError(absl::StrCat(path, ": no cluster server"));
}

std::vector<std::pair<std::string, std::string>> ApiServerDiscovery::Sources() const {
  std::vector<std::pair<std::string, std::string>> out;
  if (!options_.flags.empty()) {
    for (const std::string& f : options_.flags) out.emplace_back(f, "--apiserver");
    return out;
  }
  if (!options_.service_host.empty()) {
    std::string host = options_.service_host;
    if (host.find(':') != std::string::npos) host = absl::StrCat("[", host, "]");
    out.emplace_back(
        absl::StrCat(host, ":", options_.service_port.empty() ? "443" : options_.service_port),
        "KUBERNETES_SERVICE_HOST");
  }
  for (const std::string& path : options_.kubeconfigs) {
    auto server = KubeconfigServer(path);
    if (server.ok()) out.emplace_back(*server, path);
  }
  return out;
}

std::vector<IpEndpoint> ApiServerDiscovery::Resolve(std::vector<std::string>* errors) const {
  std::vector<IpEndpoint> out;
  auto add = [&](IpEndpoint ep) {
    for (const IpEndpoint& e : out) {
      if (e == ep) return;
    }
    out.push_back(std::move(ep));
  };
  for (const auto& [host_port, source] : Sources()) {
    if (auto ep = ParseIpEndpoint(host_port); ep.ok()) {
      add(*std::move(ep));
      continue;
    }
    std::string host, port_text;
    int port = 0;
    if (!SplitHostPort(host_port, &host, &port_text) || !absl::SimpleAtoi(port_text, &port)) {
      if (errors) errors->push_back(absl::StrCat(source, ": '", host_port, "' is not HOST:PORT"));
      continue;
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res); rc != 0) {
      if (errors) errors->push_back(absl::StrCat(source, ": ", host, ": ", gai_strerror(rc)));
      continue;
    }
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
      IpEndpoint ep;
      ep.family = ai->ai_family;
      ep.port = static_cast<uint16_t>(port);
      if (ai->ai_family == AF_INET) {
        std::memcpy(ep.addr, &reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr, 4);
      } else if (ai->ai_family == AF_INET6) {
        std::memcpy(ep.addr, &reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr, 16);
      } else {
        continue;
      }
      ep.text = EndpointText(ep.family, ep.addr, ep.port);
      add(std::move(ep));
    }
    freeaddrinfo(res);
  }
  return out;
}

bool InRanges(const IpEndpoint& ip, const std::vector<std::string>& cidrs) {
  for (const std::string& cidr : cidrs) {
    std::vector<std::string> parts = absl::StrSplit(cidr, '/');
    if (parts.size() != 2) continue;
    uint8_t net[16] = {};
    int family = inet_pton(AF_INET, parts[0].c_str(), net) == 1    ? AF_INET
                 : inet_pton(AF_INET6, parts[0].c_str(), net) == 1 ? AF_INET6
                                                                    : 0;
    int bits = 0;
    if (family != ip.family || !absl::SimpleAtoi(parts[1], &bits)) continue;
    int max_bits = family == AF_INET ? 32 : 128;
    if (bits < 0 || bits > max_bits) continue;
    bool match = true;
    for (int i = 0; i < bits && match; ++i) {
      int byte = i / 8, bit = 7 - i % 8;
      match = ((net[byte] >> bit) & 1) == ((ip.addr[byte] >> bit) & 1);
    }
    if (match) return true;
  }
  return false;
}

const std::vector<std::string>& DefaultClusterRanges() {
  static const std::vector<std::string> kRanges = {
      "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
      "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10"};
  return kRanges;
}

}  // namespace tokenwatch::k8s
