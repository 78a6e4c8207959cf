// Collector benchmarks (not a timed test; run by run.sh):
//   ingest  findings/s acked (durably stored) over real gRPC streams on loopback, as agents
//           deliver them: several concurrent Report streams into one collector.
//   list    ListFindings latency for the newest 100 among N stored (default 1,000,000), over
//           gRPC, unfiltered and with a rule filter.
//
//   bench_collector ingest [--findings N] [--streams S] [--db PATH]
//   bench_collector list [--stored N] [--queries Q] [--db PATH]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "collector/service.h"
#include "collector/store.h"

namespace {

using tokenwatch::v1::Finding;

void SetTime(google::protobuf::Timestamp* ts, absl::Time t) {
  const int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1000000000);
  ts->set_nanos(static_cast<int32_t>(nanos % 1000000000));
}

// A realistic finding: a cross-pod read with a three-level lineage (about 700 bytes).
Finding MakeFinding(uint64_t n, absl::Time t) {
  Finding f;
  f.set_id(absl::StrFormat("%08x-2fa1-41d2-883f-%012x", static_cast<uint32_t>(n >> 48), n));
  f.set_node(absl::StrCat("node-", n % 50));
  SetTime(f.mutable_time(), t);
  SetTime(f.mutable_last_seen(), t);
  f.set_count(1);
  f.set_rule_id(n % 10 == 0 ? "TW010" : "TW002");
  f.set_rule_name("token-read-cross-pod");
  f.set_severity(tokenwatch::v1::SEVERITY_CRITICAL);
  f.set_summary("cat in attacker/shell-0 read the token of payments/api-0");
  f.add_mitre("T1528");
  auto* token = f.mutable_token();
  token->set_host_path(
      "/var/lib/kubelet/pods/7f1c2a9e-1111-4d2b-9c3e-000000000001/volumes/"
      "kubernetes.io~projected/kube-api-access-abcde/..2025_01_01_00_00_00.1/token");
  token->set_kind(tokenwatch::v1::TOKEN_KIND_PROJECTED);
  token->mutable_owner()->set_namespace_(absl::StrCat("ns-", n % 20));
  token->mutable_owner()->set_name("api-0");
  token->set_service_account("api");
  auto* p = f.mutable_process();
  p->set_pid(4242);
  p->set_exe("/bin/cat");
  p->add_argv("cat");
  p->add_argv("/proc/1/root/var/run/secrets/kubernetes.io/serviceaccount/token");
  p->mutable_pod()->set_namespace_("attacker");
  p->mutable_pod()->set_name("shell-0");
  for (const char* exe : {"/bin/sh", "/usr/bin/containerd-shim-runc-v2", "/sbin/init"}) {
    auto* a = f.add_ancestors();
    a->set_pid(100);
    a->set_exe(exe);
  }
  return f;
}

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 2; i + 1 < argc; ++i) {
    if (argv[i] == name) return argv[i + 1];
  }
  return fallback;
}

std::string TempDb() {
  char tmpl[] = "/tmp/tw-bench-collector-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) std::abort();
  return std::string(tmpl) + "/collector.db";
}

int Ingest(int argc, char** argv) {
  const uint64_t total = std::stoull(Arg(argc, argv, "--findings", "200000"));
  const int streams = std::stoi(Arg(argc, argv, "--streams", "4"));
  const std::string db = Arg(argc, argv, "--db", TempDb());
  auto store = tokenwatch::collector::FindingStore::Open(db);
  if (!store.ok()) return std::fprintf(stderr, "%s\n", store.status().ToString().c_str()), 1;
  tokenwatch::collector::CollectorService service(store->get());
  auto server = tokenwatch::collector::StartServer("127.0.0.1:0", &service);
  if (!server.ok()) return 1;
  auto channel_for = [&] {
    grpc::ChannelArguments args;
    args.SetInt("tw.bench.channel", rand());  // one connection per stream, like agents
    return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", server->port),
                                     grpc::InsecureChannelCredentials(), args);
  };
  // Findings are built before the clock starts: the benchmark measures the collector.
  const uint64_t per = total / streams;
  std::vector<std::vector<tokenwatch::v1::ReportRequest>> requests(streams);
  const absl::Time now = absl::Now();
  for (int s = 0; s < streams; ++s) {
    requests[s].resize(per);
    for (uint64_t i = 0; i < per; ++i) {
      requests[s][i].mutable_finding()->set_sequence(i + 1);
      *requests[s][i].mutable_finding()->mutable_finding() =
          MakeFinding(s * per + i, now - absl::Seconds(static_cast<double>(i) / 1000));
    }
  }
  std::vector<std::thread> agents;
  const auto start = std::chrono::steady_clock::now();
  for (int s = 0; s < streams; ++s) {
    agents.emplace_back([&, s] {
      auto stub = tokenwatch::v1::Collector::NewStub(channel_for());
      grpc::ClientContext ctx;
      auto stream = stub->Report(&ctx);
      tokenwatch::v1::ReportRequest hello;
      hello.mutable_hello()->set_node(absl::StrCat("node-", s));
      hello.mutable_hello()->set_agent_id(absl::StrCat("agent-", s));
      stream->Write(hello);
      std::thread acks([&] {
        tokenwatch::v1::ReportResponse r;
        while (stream->Read(&r)) {
          if (r.ack().sequence() == per) break;
        }
      });
      for (const auto& r : requests[s]) stream->Write(r);
      acks.join();
      stream->WritesDone();
      stream->Finish();
    });
  }
  for (auto& t : agents) t.join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  tokenwatch::collector::FindingQuery q;
  q.limit = 1;
  std::printf("ingest: %llu findings over %d streams acked in %.2f s = %.0f findings/s "
              "(target >= 20000)\n",
              static_cast<unsigned long long>(per * streams), streams, secs,
              per * streams / secs);
  server->server->Shutdown();
  std::filesystem::remove_all(std::filesystem::path(db).parent_path());
  return 0;
}

int List(int argc, char** argv) {
  const uint64_t stored = std::stoull(Arg(argc, argv, "--stored", "1000000"));
  const int queries = std::stoi(Arg(argc, argv, "--queries", "50"));
  const std::string db = Arg(argc, argv, "--db", TempDb());
  auto store = tokenwatch::collector::FindingStore::Open(db);
  if (!store.ok()) return 1;
  // Fill directly through the store, in large transactions.
  const auto fill_start = std::chrono::steady_clock::now();
  const absl::Time base = absl::Now() - absl::Hours(24 * 30);
  std::vector<Finding> batch;
  std::vector<const Finding*> ptrs;
  for (uint64_t n = 0; n < stored;) {
    batch.clear();
    ptrs.clear();
    for (int i = 0; i < 20000 && n < stored; ++i, ++n) {
      batch.push_back(MakeFinding(n, base + absl::Milliseconds(static_cast<int64_t>(n) * 2)));
    }
    for (const Finding& f : batch) ptrs.push_back(&f);
    if (!(*store)->Upsert(ptrs).ok()) return 1;
  }
  std::printf("list: stored %llu findings in %.1f s\n", static_cast<unsigned long long>(stored),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - fill_start)
                  .count());

  tokenwatch::collector::CollectorService service(store->get());
  auto server = tokenwatch::collector::StartServer("127.0.0.1:0", &service);
  if (!server.ok()) return 1;
  auto stub = tokenwatch::v1::Collector::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", server->port), grpc::InsecureChannelCredentials()));
  struct Case {
    const char* name;
    tokenwatch::v1::ListFindingsRequest request;
  };
  std::vector<Case> cases(3);
  cases[0].name = "newest 100";
  cases[1].name = "newest 100, rule TW010";
  cases[1].request.set_rule_id("TW010");
  cases[2].name = "newest 100, namespace ns-7 + high";
  cases[2].request.set_namespace_("ns-7");
  cases[2].request.set_min_severity(tokenwatch::v1::SEVERITY_HIGH);
  for (Case& c : cases) {
    c.request.set_limit(100);
    std::vector<double> ms;
    for (int i = 0; i < queries + 1; ++i) {
      grpc::ClientContext ctx;
      tokenwatch::v1::ListFindingsResponse resp;
      const auto t0 = std::chrono::steady_clock::now();
      grpc::Status status = stub->ListFindings(&ctx, c.request, &resp);
      const double elapsed =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
              .count();
      if (!status.ok() || resp.findings_size() != 100) {
        std::fprintf(stderr, "query failed: %s\n", status.error_message().c_str());
        return 1;
      }
      if (i > 0) ms.push_back(elapsed);  // the first query warms the page cache
    }
    std::sort(ms.begin(), ms.end());
    std::printf("list: %-36s p50 %.2f ms  p95 %.2f ms  max %.2f ms (target < 50 ms)\n", c.name,
                ms[ms.size() / 2], ms[ms.size() * 95 / 100], ms.back());
  }
  server->server->Shutdown();
  std::filesystem::remove_all(std::filesystem::path(db).parent_path());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "ingest") return Ingest(argc, argv);
  if (mode == "list") return List(argc, argv);
  std::fprintf(stderr, "usage: bench_collector ingest|list [options]\n");
  return 2;
}
