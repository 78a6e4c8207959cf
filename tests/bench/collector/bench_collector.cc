// Collector benchmarks (not a timed test; run by run.sh). Both drive the real
// tokenwatch-collector binary, started here as a separate process, over gRPC on loopback, the
// way agents and tokenwatchctl reach it in a deployment:
//
//   ingest  findings/s acked (durably stored) over several concurrent Report streams, each
//           written the way the agent's CollectorClient writes (one finding a message, a
//           synchronous stream, acks read on their own thread). The collector's own CPU time
//           is measured beside the rate: on this machine the clients share its two cores,
//           in a deployment they run on other nodes. With --baseline, a second collector
//           binary (an older build) runs alternately in the same run, for a side-by-side.
//   list    ListFindings latency for the newest 100 among N stored (default 1,000,000),
//           unfiltered and with each filter.
//
//   bench_collector ingest --collector BIN [--baseline BIN] [--findings N] [--streams S]
//                          [--reps R]
//   bench_collector list --collector BIN [--stored N] [--queries Q]
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "collector/store.h"
#include "tokenwatch/v1/collector.grpc.pb.h"

namespace {

using tokenwatch::v1::Finding;

void SetTime(google::protobuf::Timestamp* ts, absl::Time t) {
  const int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1000000000);
  ts->set_nanos(static_cast<int32_t>(nanos % 1000000000));
}

// A realistic finding: a cross-pod read with a three-level lineage (about 700 bytes). Fifty
// nodes, twenty namespaces; one in ten is a TW010; node "node-rare" holds one in 10,000.
Finding MakeFinding(uint64_t n, absl::Time t) {
  Finding f;
  f.set_id(absl::StrFormat("%08x-2fa1-41d2-883f-%012x", static_cast<uint32_t>(n >> 48), n));
  f.set_node(n % 10000 == 5 ? std::string("node-rare") : absl::StrCat("node-", n % 50));
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
  token->mutable_owner()->set_name(absl::StrCat("api-", n % 1000));
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

std::string TempDir() {
  char tmpl[] = "/tmp/tw-bench-collector-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) std::abort();
  return tmpl;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// A tokenwatch-collector process on a free loopback port.
class CollectorProcess {
 public:
  // Starts `binary` on `db` and waits for its "listening on" line; exits on failure.
  CollectorProcess(const std::string& binary, const std::string& db) {
    int out[2];
    if (pipe(out) != 0) std::abort();
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      close(out[1]);
      execl(binary.c_str(), binary.c_str(), "--listen", "127.0.0.1:0", "--metrics-address",
            "127.0.0.1:0", "--db", db.c_str(), static_cast<char*>(nullptr));
      std::perror(binary.c_str());
      _exit(127);
    }
    close(out[1]);
    lines_ = fdopen(out[0], "r");
    char line[256];
    while (std::fgets(line, sizeof line, lines_) != nullptr) {
      const std::string text(line);
      const size_t colon = text.rfind(':');
      if (text.rfind("listening on ", 0) == 0 && colon != std::string::npos) {
        port_ = std::atoi(text.c_str() + colon + 1);
        break;
      }
    }
    // The pipe stays open until the collector exits: a write to a closed pipe would kill it.
    if (port_ <= 0) {
      std::fprintf(stderr, "%s did not start\n", binary.c_str());
      std::exit(1);
    }
  }

  ~CollectorProcess() {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    fclose(lines_);
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  // User + system CPU time of the whole process so far.
  double CpuSeconds() const {
    std::ifstream in(absl::StrCat("/proc/", pid_, "/stat"));
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::istringstream fields(stat.substr(stat.rfind(')') + 2));
    std::string field;
    double ticks = 0;
    // Fields 3.. follow the command name; utime and stime are fields 14 and 15.
    for (int i = 3; i <= 15 && fields >> field; ++i) {
      if (i >= 14) ticks += std::strtod(field.c_str(), nullptr);
    }
    return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  FILE* lines_ = nullptr;
};

int64_t CountRows(const std::string& db) {
  sqlite3* handle = nullptr;
  int64_t rows = -1;
  if (sqlite3_open_v2(db.c_str(), &handle, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(handle, "SELECT count(*) FROM findings", -1, &stmt, nullptr) ==
            SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
      rows = sqlite3_column_int64(stmt, 0);
    }
    sqlite3_finalize(stmt);
  }
  sqlite3_close(handle);
  return rows;
}

struct IngestResult {
  double findings_per_second = 0;
  double collector_cpu_us_per_finding = 0;
  double collector_cpu_share = 0;  // collector CPU seconds per wall second (2.0 = both cores)
  double seconds = 0;
};

// One ingest run into a fresh database; exits when not every finding is acked and stored once.
IngestResult RunIngest(const std::string& binary,
                       const std::vector<std::vector<tokenwatch::v1::ReportRequest>>& requests) {
  const std::string dir = TempDir();
  const std::string db = dir + "/collector.db";
  uint64_t total = 0;
  for (const auto& stream : requests) total += stream.size();
  IngestResult result;
  {
    CollectorProcess collector(binary, db);
    std::vector<std::thread> agents;
    const double cpu_start = collector.CpuSeconds();
    const auto start = std::chrono::steady_clock::now();
    for (size_t s = 0; s < requests.size(); ++s) {
      agents.emplace_back([&, s] {
        grpc::ChannelArguments args;
        args.SetInt("tw.bench.stream", static_cast<int>(s));  // one connection per agent
        auto stub = tokenwatch::v1::Collector::NewStub(grpc::CreateCustomChannel(
            collector.address(), grpc::InsecureChannelCredentials(), args));
        grpc::ClientContext ctx;
        auto stream = stub->Report(&ctx);
        tokenwatch::v1::ReportRequest hello;
        hello.mutable_hello()->set_node(absl::StrCat("node-", s));
        hello.mutable_hello()->set_agent_id(absl::StrCat("agent-", s));
        stream->Write(hello);
        const uint64_t last = requests[s].size();
        std::thread acks([&] {
          tokenwatch::v1::ReportResponse r;
          while (stream->Read(&r)) {
            if (r.ack().sequence() == last) break;
          }
        });
        for (const auto& r : requests[s]) {
          if (!stream->Write(r)) break;
        }
        acks.join();
        stream->WritesDone();
        grpc::Status status = stream->Finish();
        if (!status.ok()) {
          std::fprintf(stderr, "stream %zu: %s\n", s, status.error_message().c_str());
          std::exit(1);
        }
      });
    }
    for (auto& t : agents) t.join();
    result.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double cpu = collector.CpuSeconds() - cpu_start;
    result.findings_per_second = total / result.seconds;
    result.collector_cpu_us_per_finding = cpu * 1e6 / total;
    result.collector_cpu_share = cpu / result.seconds;
  }
  const int64_t rows = CountRows(db);
  if (rows != static_cast<int64_t>(total)) {
    std::fprintf(stderr, "%s: %lld rows stored for %llu findings acked\n", binary.c_str(),
                 static_cast<long long>(rows), static_cast<unsigned long long>(total));
    std::exit(1);
  }
  std::filesystem::remove_all(dir);
  return result;
}

int Ingest(int argc, char** argv) {
  const std::string binary = Arg(argc, argv, "--collector", "");
  const std::string baseline = Arg(argc, argv, "--baseline", "");
  const uint64_t total = std::stoull(Arg(argc, argv, "--findings", "200000"));
  const int streams = std::stoi(Arg(argc, argv, "--streams", "4"));
  const int reps = std::stoi(Arg(argc, argv, "--reps", "3"));
  if (binary.empty()) return std::fprintf(stderr, "ingest: --collector BIN is required\n"), 2;

  // Findings are built before any clock starts: the benchmark measures the collector.
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
  struct Config {
    std::string label;
    std::string binary;
    std::vector<IngestResult> runs;
  };
  std::vector<Config> configs;
  if (!baseline.empty()) configs.push_back({"baseline", baseline, {}});
  configs.push_back({"this build", binary, {}});
  std::printf("ingest: %llu findings over %d streams (loopback gRPC, collector in its own "
              "process), %d repetitions%s\n",
              static_cast<unsigned long long>(per * streams), streams, reps,
              configs.size() > 1 ? ", configurations alternated" : "");
  std::printf("  %-11s %-4s %12s %10s %22s %16s\n", "collector", "rep", "findings/s", "wall s",
              "collector CPU/finding", "collector cores");
  for (int r = 0; r < reps; ++r) {
    for (size_t i = 0; i < configs.size(); ++i) {
      Config& c = configs[(i + r) % configs.size()];
      IngestResult res = RunIngest(c.binary, requests);
      std::printf("  %-11s %-4d %12.0f %10.2f %19.1f us %16.2f\n", c.label.c_str(), r + 1,
                  res.findings_per_second, res.seconds, res.collector_cpu_us_per_finding,
                  res.collector_cpu_share);
      std::fflush(stdout);
      c.runs.push_back(res);
    }
  }
  for (const Config& c : configs) {
    std::vector<double> rate, cpu;
    for (const IngestResult& res : c.runs) {
      rate.push_back(res.findings_per_second);
      cpu.push_back(res.collector_cpu_us_per_finding);
    }
    std::printf("ingest: %-10s median %.0f findings/s, collector CPU %.1f us a finding "
                "(target >= 20000 findings/s)\n",
                c.label.c_str(), Median(rate), Median(cpu));
  }
  return 0;
}

int List(int argc, char** argv) {
  const std::string binary = Arg(argc, argv, "--collector", "");
  const uint64_t stored = std::stoull(Arg(argc, argv, "--stored", "1000000"));
  const int queries = std::stoi(Arg(argc, argv, "--queries", "50"));
  if (binary.empty()) return std::fprintf(stderr, "list: --collector BIN is required\n"), 2;
  const std::string dir = TempDir();
  const std::string db = dir + "/collector.db";
  {
    auto store = tokenwatch::collector::FindingStore::Open(db);
    if (!store.ok()) return std::fprintf(stderr, "%s\n", store.status().ToString().c_str()), 1;
    // Filled directly through the store, in large transactions: only the queries are measured.
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
      if (absl::Status s = (*store)->Upsert(ptrs); !s.ok()) {
        return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
      }
    }
    std::printf("list: stored %llu findings in %.1f s (%.0f MiB)\n",
                static_cast<unsigned long long>(stored),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - fill_start)
                    .count(),
                std::filesystem::file_size(db) / 1048576.0);
  }

  auto collector = std::make_unique<CollectorProcess>(binary, db);
  auto stub = tokenwatch::v1::Collector::NewStub(
      grpc::CreateChannel(collector->address(), grpc::InsecureChannelCredentials()));
  struct Case {
    const char* name;
    tokenwatch::v1::ListFindingsRequest request;
    int expect;
  };
  std::vector<Case> cases(9);
  cases[0].name = "newest 100";
  cases[1].name = "newest 100, rule TW010";
  cases[1].request.set_rule_id("TW010");
  cases[2].name = "newest 100, node node-7";
  cases[2].request.set_node("node-7");
  cases[3].name = "newest 100, node node-rare (1 in 10^4)";
  cases[3].request.set_node("node-rare");
  cases[4].name = "newest 100, namespace ns-7 + high";
  cases[4].request.set_namespace_("ns-7");
  cases[4].request.set_min_severity(tokenwatch::v1::SEVERITY_HIGH);
  cases[5].name = "newest 100, pod api-7";
  cases[5].request.set_pod("api-7");
  cases[6].name = "newest 100, namespace ns-999 (none)";
  cases[6].request.set_namespace_("ns-999");
  // The namespace and pod filters match the token owner's side or the actor's: every finding
  // has actor namespace "attacker", none has a pod "api-none".
  cases[7].name = "newest 100, namespace attacker (actor side)";
  cases[7].request.set_namespace_("attacker");
  cases[8].name = "newest 100, pod api-none (none)";
  cases[8].request.set_pod("api-none");
  for (Case& c : cases) c.expect = 100;
  cases[3].expect = static_cast<int>(std::min<uint64_t>(100, stored / 10000));
  cases[6].expect = 0;
  cases[8].expect = 0;
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
      if (!status.ok() || resp.findings_size() != c.expect) {
        std::fprintf(stderr, "%s: %d findings (want %d): %s\n", c.name, resp.findings_size(),
                     c.expect, status.error_message().c_str());
        return 1;
      }
      if (i > 0) ms.push_back(elapsed);  // the first query warms the page cache
    }
    std::sort(ms.begin(), ms.end());
    std::printf("list: %-44s p50 %7.2f ms  p95 %7.2f ms  max %7.2f ms (target < 50 ms)\n",
                c.name, ms[ms.size() / 2], ms[ms.size() * 95 / 100], ms.back());
  }
  collector.reset();
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "ingest") return Ingest(argc, argv);
  if (mode == "list") return List(argc, argv);
  std::fprintf(stderr, "usage: bench_collector ingest|list --collector BIN [options]\n");
  return 2;
}
