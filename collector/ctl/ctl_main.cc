// tokenwatchctl: queries a tokenwatch collector.
//
//   tokenwatchctl [--collector HOST:PORT] findings [list] [--since 10m|RFC3339] [--until T]
//                 [--severity medium] [--rule TW002] [--namespace NS] [--pod P] [--node N]
//                 [--limit N] [--json]
//   tokenwatchctl [--collector HOST:PORT] findings watch [filters as above, no times] [--json]
//   tokenwatchctl [--collector HOST:PORT] findings show ID      (also: finding ID)
//   tokenwatchctl [--collector HOST:PORT] profile export [--namespace NS] [--workload GLOB]
//                 [--node N]
//   TLS: --tls-ca FILE [--tls-cert FILE --tls-key FILE]

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>
#include <algorithm>
#include <fstream>
#include <sstream>
#include <tuple>
#include <utility>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "collector/cli_args.h"
#include "common/profile_policy.h"
#include "collector/ctl/format.h"
#include "tokenwatch/v1/collector.grpc.pb.h"

ABSL_FLAG(std::string, collector, "127.0.0.1:9760", "the collector's gRPC address, HOST:PORT");
ABSL_FLAG(std::string, since, "",
          "findings: only those last seen within this duration (10m, 2h, 3d) or since this "
          "RFC 3339 time");
ABSL_FLAG(std::string, severity, "", "findings: at least this severe (low|medium|high|critical)");
ABSL_FLAG(std::string, rule, "", "findings: only this rule id, e.g. TW002");
ABSL_FLAG(std::string, namespace, "",
          "findings: only those whose token owner or actor pod is in this namespace; "
          "profile export: only workloads in this namespace");
ABSL_FLAG(std::string, node, "",
          "findings: only from this node; profile export: only profiles learned on this node");
ABSL_FLAG(std::string, workload, "",
          "profile export: only workloads whose name matches this glob (api, web-*)");
ABSL_FLAG(std::string, until, "",
          "findings list: only those last seen before this duration ago (10m) or RFC 3339 time");
ABSL_FLAG(std::string, pod, "",
          "findings: only those whose token owner or actor pod has this name");
ABSL_FLAG(int32_t, limit, 100,
          "findings list: at most this many (1..1000000), fetched in pages of up to 10000");
ABSL_FLAG(std::string, tls_ca, "", "connect with TLS, verifying the collector with this CA (PEM)");
ABSL_FLAG(std::string, tls_cert, "", "client certificate for TLS (PEM), with --tls-key");
ABSL_FLAG(std::string, tls_key, "", "private key of --tls-cert (PEM)");
ABSL_FLAG(bool, json, false, "findings: print one finding per line as proto3 JSON");
ABSL_FLAG(int32_t, timeout_seconds, 10, "give up on the collector after this many seconds");

namespace {

using tokenwatch::collector::DashesToUnderscores;
using tokenwatch::collector::ReadFile;

using tokenwatch::v1::Finding;

constexpr char kUsage[] =
    "usage: tokenwatchctl [--collector HOST:PORT] findings [list] [--since 10m|RFC3339] "
    "[--until 10m|RFC3339] [--severity S] [--rule TWnnn] [--namespace NS] [--pod P] [--node N] "
    "[--limit N] [--json]\n"
    "       tokenwatchctl [--collector HOST:PORT] findings watch [--severity S] [--rule TWnnn] "
    "[--namespace NS] [--pod P] [--node N] [--json]\n"
    "       tokenwatchctl [--collector HOST:PORT] findings show ID   (or: finding ID)\n"
    "       tokenwatchctl [--collector HOST:PORT] profile export [--namespace NS] "
    "[--workload GLOB] [--node N]\n"
    "TLS: --tls-ca FILE [--tls-cert FILE --tls-key FILE]";

int Fail(const std::string& message) {
  std::fprintf(stderr, "tokenwatchctl: %s\n", message.c_str());
  return 1;
}

int FailRpc(const grpc::Status& status) {
  const std::string address = absl::GetFlag(FLAGS_collector);
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return Fail(absl::StrCat("cannot reach the collector at ", address, ": ",
                               status.error_message()));
    default:
      return Fail(absl::StrCat("collector at ", address, ": ", status.error_message()));
  }
}

// Channel credentials from the --tls-* flags; an error names the flag and file.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials() {
  const std::string ca = absl::GetFlag(FLAGS_tls_ca);
  const std::string cert = absl::GetFlag(FLAGS_tls_cert);
  const std::string key = absl::GetFlag(FLAGS_tls_key);
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key must be given together");
  }
  if (ca.empty()) {
    if (!cert.empty()) return absl::InvalidArgumentError("--tls-cert needs --tls-ca");
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions ssl;
  for (auto [flag, path, out] :
       {std::tuple<const char*, const std::string*, std::string*>{"--tls-ca", &ca,
                                                                   &ssl.pem_root_certs},
        {"--tls-cert", &cert, &ssl.pem_cert_chain},
        {"--tls-key", &key, &ssl.pem_private_key}}) {
    if (!path->empty() && !ReadFile(*path, out)) {
      return absl::InvalidArgumentError(absl::StrCat(flag, " ", *path, ": cannot read the file"));
    }
  }
  return grpc::SslCredentials(ssl);
}

std::unique_ptr<tokenwatch::v1::Collector::Stub> Connect(
    std::shared_ptr<grpc::ChannelCredentials> credentials) {
  grpc::ChannelArguments args;
  // A full page of findings (10000, each up to a few hundred KiB in theory) can exceed gRPC's
  // 4 MiB default.
  args.SetMaxReceiveMessageSize(256 * 1024 * 1024);
  return tokenwatch::v1::Collector::NewStub(
      grpc::CreateCustomChannel(absl::GetFlag(FLAGS_collector), credentials, args));
}

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* ts) {
  const int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1000000000 - (nanos % 1000000000 < 0));
  ts->set_nanos(static_cast<int32_t>((nanos % 1000000000 + 1000000000) % 1000000000));
}

// Applies --severity, --rule, --namespace, --pod and --node to a request of either kind.
template <typename Request>
absl::Status SetFilters(Request* request) {
  if (std::string severity = absl::GetFlag(FLAGS_severity); !severity.empty()) {
    absl::StatusOr<tokenwatch::v1::Severity> s =
        tokenwatch::collector::ctl::ParseSeverity(severity);
    if (!s.ok()) return s.status();
    request->set_min_severity(*s);
  }
  request->set_rule_id(absl::GetFlag(FLAGS_rule));
  request->set_namespace_(absl::GetFlag(FLAGS_namespace));
  request->set_pod(absl::GetFlag(FLAGS_pod));
  request->set_node(absl::GetFlag(FLAGS_node));
  return absl::OkStatus();
}

// One finding as a JSON line; false if it cannot be rendered.
bool PrintJson(const Finding& f) {
  std::string line;
  if (!google::protobuf::util::MessageToJsonString(f, &line).ok()) return false;
  std::printf("%s\n", line.c_str());
  return true;
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(absl::GetFlag(FLAGS_timeout_seconds)));
}

int ListFindings(std::shared_ptr<grpc::ChannelCredentials> credentials) {
  tokenwatch::v1::ListFindingsRequest request;
  for (auto [flag, field] :
       {std::pair<std::string, google::protobuf::Timestamp*>{absl::GetFlag(FLAGS_since),
                                                             request.mutable_since()},
        {absl::GetFlag(FLAGS_until), request.mutable_until()}}) {
    if (flag.empty()) continue;
    absl::StatusOr<absl::Time> t = tokenwatch::collector::ctl::ParseSince(flag, absl::Now());
    if (!t.ok()) return Fail(std::string(t.status().message()));
    SetTimestamp(*t, field);
  }
  if (absl::GetFlag(FLAGS_since).empty()) request.clear_since();
  if (absl::GetFlag(FLAGS_until).empty()) request.clear_until();
  if (absl::Status s = SetFilters(&request); !s.ok()) return Fail(std::string(s.message()));
  const int32_t limit = absl::GetFlag(FLAGS_limit);
  if (limit < 1 || limit > 1000000) {
    return Fail(absl::StrCat("--limit: expected 1..1000000, got ", limit));
  }

  auto stub = Connect(credentials);
  std::vector<Finding> findings;
  // Page through until the limit or the last page.
  do {
    request.set_limit(static_cast<uint32_t>(
        std::min<size_t>(10000, static_cast<size_t>(limit) - findings.size())));
    grpc::ClientContext context;
    SetDeadline(&context);
    tokenwatch::v1::ListFindingsResponse response;
    grpc::Status status;
    absl::Notification done;
    stub->async()->ListFindings(&context, &request, &response, [&](grpc::Status s) {
      status = std::move(s);
      done.Notify();
    });
    done.WaitForNotification();
    if (!status.ok()) return FailRpc(status);
    for (Finding& f : *response.mutable_findings()) findings.push_back(std::move(f));
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty() && findings.size() < static_cast<size_t>(limit));

  if (absl::GetFlag(FLAGS_json)) {
    for (const Finding& f : findings) {
      if (!PrintJson(f)) return Fail(absl::StrCat("cannot render finding ", f.id(), " as JSON"));
    }
  } else if (findings.empty()) {
    std::fprintf(stderr, "no findings\n");
  } else {
    std::fputs(tokenwatch::collector::ctl::FormatTable(findings).c_str(), stdout);
  }
  return 0;
}

// Prints findings as the collector stores them until interrupted or the stream ends.
int WatchFindings(std::shared_ptr<grpc::ChannelCredentials> credentials) {
  if (!absl::GetFlag(FLAGS_since).empty() || !absl::GetFlag(FLAGS_until).empty()) {
    return Fail("findings watch: --since and --until apply to 'findings list' only");
  }
  tokenwatch::v1::WatchFindingsRequest request;
  if (absl::Status s = SetFilters(&request); !s.ok()) return Fail(std::string(s.message()));
  auto stub = Connect(credentials);
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<Finding>> reader = stub->WatchFindings(&context, request);
  const bool json = absl::GetFlag(FLAGS_json);
  bool header = true;
  Finding f;
  while (reader->Read(&f)) {
    if (json) {
      if (!PrintJson(f)) return Fail(absl::StrCat("cannot render finding ", f.id(), " as JSON"));
    } else {
      std::string table = tokenwatch::collector::ctl::FormatTable({f});
      if (!header) table = table.substr(table.find('\n') + 1);
      header = false;
      std::fputs(table.c_str(), stdout);
    }
    std::fflush(stdout);
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FailRpc(status);
  return 0;
}

int ShowFinding(std::shared_ptr<grpc::ChannelCredentials> credentials, const std::string& id) {
  auto stub = Connect(credentials);
  grpc::ClientContext context;
  SetDeadline(&context);
  tokenwatch::v1::GetFindingRequest request;
  request.set_id(id);
  Finding finding;
  grpc::Status status;
  absl::Notification done;
  stub->async()->GetFinding(&context, &request, &finding, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  if (!status.ok()) return FailRpc(status);
  if (absl::GetFlag(FLAGS_json)) {
    std::string line;
    if (!google::protobuf::util::MessageToJsonString(finding, &line).ok()) {
      return Fail("cannot render the finding as JSON");
    }
    std::printf("%s\n", line.c_str());
  } else {
    std::fputs(tokenwatch::collector::ctl::FormatFinding(finding).c_str(), stdout);
  }
  return 0;
}

// Fetches every stored profile matching --namespace, --workload and --node (all pages), merges
// each workload container's copies from all nodes and prints them as a `policy:` document.
int ExportProfiles(std::shared_ptr<grpc::ChannelCredentials> credentials) {
  tokenwatch::v1::ListProfilesRequest request;
  request.set_namespace_(absl::GetFlag(FLAGS_namespace));
  request.set_workload(absl::GetFlag(FLAGS_workload));
  request.set_node(absl::GetFlag(FLAGS_node));
  auto stub = Connect(credentials);
  std::vector<tokenwatch::v1::LearnedProfile> copies;
  // Every page but the last is full; an empty page that still names a next one ends the loop
  // too, so a confused collector cannot keep us here.
  bool more = true;
  while (more) {
    grpc::ClientContext context;
    SetDeadline(&context);
    tokenwatch::v1::ListProfilesResponse response;
    grpc::Status status;
    absl::Notification done;
    stub->async()->ListProfiles(&context, &request, &response, [&](grpc::Status s) {
      status = std::move(s);
      done.Notify();
    });
    done.WaitForNotification();
    if (!status.ok()) return FailRpc(status);
    for (tokenwatch::v1::LearnedProfile& p : *response.mutable_profiles()) {
      copies.push_back(std::move(p));
    }
    request.set_page_token(response.next_page_token());
    more = !request.page_token().empty() && response.profiles_size() > 0;
  }
  if (copies.empty()) {
    // Still a valid (empty) policy on stdout, so a script can rely on it; the hint goes to
    // stderr.
    std::fprintf(stderr, "no learned profiles match\n");
  }
  std::fputs(tokenwatch::profiles::RenderPolicyYaml(
                 tokenwatch::profiles::MergeProfiles(copies, absl::Now()))
                 .c_str(),
             stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  // Flags may stand anywhere; what is left is the subcommand and its arguments.
  std::vector<std::string> arg_storage;
  std::vector<char*> dashed = DashesToUnderscores(argc, argv, &arg_storage);
  std::vector<char*> args = absl::ParseCommandLine(static_cast<int>(dashed.size()), dashed.data());
  if (args.size() < 2) {
    return Fail("missing subcommand: expected 'findings', 'finding ID' or 'profile export' "
                "(see --help)");
  }
  const std::string command = args[1];
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = Credentials();
  if (!credentials.ok()) return Fail(std::string(credentials.status().message()));
  if (command == "findings") {
    const std::string sub = args.size() > 2 ? args[2] : "list";
    const size_t extra = args.size() > 2 ? 3 : 2;
    if (sub == "list" || sub == "watch") {
      if (args.size() > extra) {
        return Fail(absl::StrCat("findings ", sub, ": unexpected argument '", args[extra], "'"));
      }
      return sub == "list" ? ListFindings(*credentials) : WatchFindings(*credentials);
    }
    if (sub == "show") {
      if (args.size() != 4) return Fail("findings show: expected exactly one finding ID");
      return ShowFinding(*credentials, args[3]);
    }
    return Fail(absl::StrCat("findings: unknown subcommand '", sub,
                             "' (expected list, watch or show)"));
  }
  if (command == "profile" || command == "profiles") {
    if (args.size() < 3 || std::string(args[2]) != "export") {
      return Fail("profile: expected 'profile export' (see --help)");
    }
    if (args.size() > 3) {
      return Fail(absl::StrCat("profile export: unexpected argument '", args[3], "'"));
    }
    return ExportProfiles(*credentials);
  }
  if (command == "finding") {
    if (args.size() != 3) return Fail("finding: expected exactly one finding ID");
    return ShowFinding(*credentials, args[2]);
  }
  return Fail(absl::StrCat("unknown subcommand '", command,
                           "' (expected findings, finding or profile)"));
}
