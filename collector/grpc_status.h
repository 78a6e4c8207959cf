#pragma once

#include <string>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace tokenwatch::collector {

// An absl::Status as the gRPC status a handler finishes with. absl's and gRPC's canonical codes
// have the same numbers, so the code carries over unchanged; the message is what the client sees.
inline grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace tokenwatch::collector
