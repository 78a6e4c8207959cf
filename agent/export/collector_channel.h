#pragma once

#include <grpcpp/channel.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace tokenwatch::exporting {

// How the agent reaches its collector: the --collector address and the collector_tls_* files.
struct CollectorChannelOptions {
  std::string address;  // HOST:PORT
  // TLS: PEM file paths. With tls_ca set the channel is TLS and verifies the collector against
  // it; tls_cert and tls_key (both or neither) present a client certificate, whose CN or SAN
  // must be the node name when the collector requires client certificates.
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
};

// A channel to the collector with the agent's settings: TLS from the files (read now; an error
// names the config key and the file), and keepalives so that a dead collector is noticed within
// seconds. CollectorClient's findings stream and ProfileUploader both use it, so the two
// connections to one collector cannot drift apart.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeCollectorChannel(
    const CollectorChannelOptions& options);

}  // namespace tokenwatch::exporting
