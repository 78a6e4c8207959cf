#pragma once

#include <grpcpp/server_context.h>

#include <set>
#include <string>

namespace tokenwatch::collector {

// The names a verified client certificate carries: its common name and subject alternative
// names; empty when the peer presented no verified certificate. A node may only speak for a
// node named here (Report's Hello, UploadProfiles) when client certificates are required.
std::set<std::string> CertificateNames(const grpc::CallbackServerContext* context);

}  // namespace tokenwatch::collector
