#include "collector/peer_names.h"

#include <grpcpp/grpcpp.h>

#include <memory>

namespace tokenwatch::collector {

std::set<std::string> CertificateNames(const grpc::CallbackServerContext* context) {
  std::set<std::string> names;
  std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return names;
  for (const char* property : {GRPC_X509_CN_PROPERTY_NAME, GRPC_X509_SAN_PROPERTY_NAME}) {
    for (const grpc::string_ref& value : auth->FindPropertyValues(property)) {
      names.emplace(value.data(), value.size());
    }
  }
  return names;
}

}  // namespace tokenwatch::collector
