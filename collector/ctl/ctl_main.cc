// tokenwatchctl: queries a tokenwatch collector.
//
//   tokenwatchctl [--collector HOST:PORT] findings [--since 10m|RFC3339] [--severity medium]
//                 [--rule TW002] [--namespace NS] [--node N] [--limit N] [--json]
//   tokenwatchctl [--collector HOST:PORT] finding ID

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "collector/ctl/format.h"
#include "tokenwatch/v1/collector.grpc.pb.h"

ABSL_FLAG(std::string, collector, "127.0.0.1:9760", "the collector's gRPC address, HOST:PORT");
ABSL_FLAG(std::string, since, "",
          "findings: only those last seen within this duration (10m, 2h, 3d) or since this "
          "RFC 3339 time");
ABSL_FLAG(std::string, severity, "", "findings: at least this severe (low|medium|high|critical)");
ABSL_FLAG(std::string, rule, "", "findings: only this rule id, e.g. TW002");
ABSL_FLAG(std::string, namespace, "",
          "findings: only those whose token owner or actor pod is in this namespace");
ABSL_FLAG(std::string, node, "", "findings: only from this node");
ABSL_FLAG(int32_t, limit, 100, "findings: at most this many (1..10000)");
ABSL_FLAG(bool, json, false, "findings: print one finding per line as proto3 JSON");
ABSL_FLAG(int32_t, timeout_seconds, 10, "give up on the collector after this many seconds");

namespace {

using tokenwatch::v1::Finding;

constexpr char kUsage[] =
    "usage: tokenwatchctl [--collector HOST:PORT] findings [--since 10m|RFC3339] "
    "[--severity S] [--rule TWnnn] [--namespace NS] [--node N] [--limit N] [--json]\n"
    "       tokenwatchctl [--collector HOST:PORT] finding ID";

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

std::unique_ptr<tokenwatch::v1::Collector::Stub> Connect() {
  grpc::ChannelArguments args;
  // A full page of findings (10000, each up to a few hundred KiB in theory) can exceed gRPC's
  // 4 MiB default.
  args.SetMaxReceiveMessageSize(256 * 1024 * 1024);
  return tokenwatch::v1::Collector::NewStub(grpc::CreateCustomChannel(
      absl::GetFlag(FLAGS_collector), grpc::InsecureChannelCredentials(), args));
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(absl::GetFlag(FLAGS_timeout_seconds)));
}

int ListFindings() {
  tokenwatch::v1::ListFindingsRequest request;
  if (std::string since = absl::GetFlag(FLAGS_since); !since.empty()) {
    absl::StatusOr<absl::Time> t = tokenwatch::collector::ctl::ParseSince(since, absl::Now());
    if (!t.ok()) return Fail(std::string(t.status().message()));
    const int64_t nanos = absl::ToUnixNanos(*t);
    request.mutable_since()->set_seconds(nanos / 1000000000 - (nanos % 1000000000 < 0));
    request.mutable_since()->set_nanos(
        static_cast<int32_t>((nanos % 1000000000 + 1000000000) % 1000000000));
  }
  if (std::string severity = absl::GetFlag(FLAGS_severity); !severity.empty()) {
    absl::StatusOr<tokenwatch::v1::Severity> s =
        tokenwatch::collector::ctl::ParseSeverity(severity);
    if (!s.ok()) return Fail(std::string(s.status().message()));
    request.set_min_severity(*s);
  }
  const int32_t limit = absl::GetFlag(FLAGS_limit);
  if (limit < 1 || limit > 10000) {
    return Fail(absl::StrCat("--limit: expected 1..10000, got ", limit));
  }
  request.set_limit(static_cast<uint32_t>(limit));
  request.set_rule_id(absl::GetFlag(FLAGS_rule));
  request.set_namespace_(absl::GetFlag(FLAGS_namespace));
  request.set_node(absl::GetFlag(FLAGS_node));

  auto stub = Connect();
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

  std::vector<Finding> findings(response.findings().begin(), response.findings().end());
  if (absl::GetFlag(FLAGS_json)) {
    for (const Finding& f : findings) {
      std::string line;
      if (!google::protobuf::util::MessageToJsonString(f, &line).ok()) {
        return Fail(absl::StrCat("cannot render finding ", f.id(), " as JSON"));
      }
      std::printf("%s\n", line.c_str());
    }
  } else if (findings.empty()) {
    std::fprintf(stderr, "no findings\n");
  } else {
    std::fputs(tokenwatch::collector::ctl::FormatTable(findings).c_str(), stdout);
  }
  return 0;
}

int ShowFinding(const std::string& id) {
  auto stub = Connect();
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

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  // Flags may stand anywhere; what is left is the subcommand and its arguments.
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    return Fail("missing subcommand: expected 'findings' or 'finding ID' (see --help)");
  }
  const std::string command = args[1];
  if (command == "findings") {
    if (args.size() > 2) return Fail(absl::StrCat("findings: unexpected argument '", args[2], "'"));
    return ListFindings();
  }
  if (command == "finding") {
    if (args.size() != 3) return Fail("finding: expected exactly one finding ID");
    return ShowFinding(args[2]);
  }
  return Fail(absl::StrCat("unknown subcommand '", command, "' (expected findings or finding)"));
}
