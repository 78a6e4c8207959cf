#include "collector/profile_service.h"

#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/profile_policy.h"
#include "collector/grpc_status.h"
#include "collector/peer_names.h"

namespace tokenwatch::collector {
namespace {

using tokenwatch::v1::LearnedProfile;

// A glob is matched by fnmatch(3), which never fails on a bad pattern (an unclosed '[' is
// taken literally), so only size and characters are checked.
absl::Status CheckFilter(const char* field, const std::string& value) {
  return profiles::ValidateName(field, value, /*required=*/false);
}

}  // namespace

absl::Status ValidateUploadProfilesRequest(const tokenwatch::v1::UploadProfilesRequest& request,
                                           absl::Time now) {
  if (absl::Status s = profiles::ValidateName("node", request.node(), /*required=*/true); !s.ok()) {
    return s;
  }
  if (absl::Status s = profiles::ValidateName("agent_id", request.agent_id(), false); !s.ok()) {
    return s;
  }
  if (request.profiles_size() > profiles::kMaxProfilesPerUpload) {
    return absl::InvalidArgumentError(
        absl::StrCat("profiles: more than ", profiles::kMaxProfilesPerUpload, " entries"));
  }
  std::set<std::tuple<std::string, std::string, std::string>> seen;
  for (int i = 0; i < request.profiles_size(); ++i) {
    const LearnedProfile& p = request.profiles(i);
    const std::string field = absl::StrCat("profiles[", i, "]");
    if (absl::Status s = profiles::ValidateProfile(p, field, now); !s.ok()) return s;
    if (!p.node().empty() && p.node() != request.node()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".node: '", p.node(), "' is not the uploading node"));
    }
    if (!seen.emplace(p.namespace_(), p.workload(), p.container()).second) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": a second profile for ",
                                                     p.namespace_(), "/", p.workload(),
                                                     " container '", p.container(), "'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ProfileQuery> ProfileQueryFromRequest(
    const tokenwatch::v1::ListProfilesRequest& request) {
  for (auto [field, value] :
       {std::pair<const char*, const std::string*>{"namespace", &request.namespace_()},
        {"workload", &request.workload()},
        {"node", &request.node()}}) {
    if (absl::Status s = CheckFilter(field, *value); !s.ok()) return s;
  }
  // An over-large limit is capped by the store, as ListFindings caps it: a client asking for
  // "everything" gets full pages and a next_page_token rather than an error.
  if (request.page_token().size() > ProfileStore::kMaxPageTokenBytes) {
    return absl::InvalidArgumentError("page_token: not a token this collector made");
  }
  ProfileQuery query;
  query.namespace_name = request.namespace_();
  query.workload_glob = request.workload();
  query.node = request.node();
  query.limit = request.limit();
  query.page_token = request.page_token();
  return query;
}

grpc::ServerUnaryReactor* ProfileRpcs::Upload(grpc::CallbackServerContext* context,
                                              const tokenwatch::v1::UploadProfilesRequest* request,
                                              tokenwatch::v1::UploadProfilesResponse* response) {
  RequestTimer timer(metrics_, "UploadProfiles");
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto finish = [&](grpc::Status status) {
    if (!status.ok()) {
      // The message may quote a node name, but only one ValidateName has accepted: at most
      // 253 bytes and no control characters, so it cannot forge or break a log line.
      std::fprintf(stderr, "tokenwatch-collector: profile upload from %s: %s\n",
                   context->peer().c_str(), status.error_message().c_str());
    }
    reactor->Finish(std::move(status));
    return reactor;
  };
  if (store_ == nullptr) {
    return finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no profile store"));
  }
  const absl::Time now = absl::Now();
  if (absl::Status s = ValidateUploadProfilesRequest(*request, now); !s.ok()) {
    return finish(ToGrpc(s));
  }
  // The same rule as a Report stream's Hello: one node's certificate cannot speak for another.
  if (verify_node_names_ && CertificateNames(context).count(request->node()) == 0) {
    return finish(grpc::Status(
        grpc::StatusCode::PERMISSION_DENIED,
        absl::StrCat("node: '", request->node(), "' is not a name in the client certificate")));
  }
  std::vector<LearnedProfile> profiles(request->profiles().begin(), request->profiles().end());
  if (absl::Status s = store_->ReplaceNode(request->node(), profiles, now); !s.ok()) {
    return finish(
        grpc::Status(grpc::StatusCode::UNAVAILABLE, absl::StrCat("store profiles: ", s.message())));
  }
  response->set_stored(static_cast<uint32_t>(profiles.size()));
  return finish(grpc::Status::OK);
}

grpc::ServerUnaryReactor* ProfileRpcs::List(grpc::CallbackServerContext* context,
                                            const tokenwatch::v1::ListProfilesRequest* request,
                                            tokenwatch::v1::ListProfilesResponse* response) {
  RequestTimer timer(metrics_, "ListProfiles");
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (store_ == nullptr) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no profile store"));
    return reactor;
  }
  absl::StatusOr<ProfileQuery> query = ProfileQueryFromRequest(*request);
  if (!query.ok()) {
    reactor->Finish(ToGrpc(query.status()));
    return reactor;
  }
  absl::StatusOr<ProfilePage> page = store_->List(*query);
  if (!page.ok()) {
    reactor->Finish(ToGrpc(page.status()));
    return reactor;
  }
  for (LearnedProfile& p : page->profiles) *response->add_profiles() = std::move(p);
  response->set_next_page_token(page->next_page_token);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace tokenwatch::collector
