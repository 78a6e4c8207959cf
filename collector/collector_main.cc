// tokenwatch-collector: receives findings from agents over gRPC, stores them in SQLite and
// serves queries (tokenwatchctl).

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <tuple>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/http_server.h"
#include "collector/cli_args.h"
#include "collector/collector_metrics.h"
#include "collector/profile_store.h"
#include "collector/service.h"
#include "collector/store.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:9760",
          "HOST:PORT to serve gRPC on; port 0 picks a free port (printed at start)");
constexpr char kDefaultMetricsAddress[] = "0.0.0.0:9761";
ABSL_FLAG(std::string, metrics_address, kDefaultMetricsAddress,
          "HOST:PORT to serve Prometheus /metrics on; port 0 picks a free port (printed at "
          "start); empty: no metrics");
ABSL_FLAG(std::string, db, "/var/lib/tokenwatch/collector.db", "SQLite database file");
ABSL_FLAG(std::string, tls_cert, "", "serve TLS with this certificate chain (PEM file)");
ABSL_FLAG(std::string, tls_key, "", "the private key of --tls-cert (PEM file)");
ABSL_FLAG(std::string, tls_client_ca, "",
          "require client certificates signed by this CA (PEM file); an agent's Hello must then "
          "name a node that is the certificate's CN or one of its SANs");

namespace {

using tokenwatch::collector::DashesToUnderscores;
using tokenwatch::collector::ReadFile;

int Fail(const std::string& message) {
  std::fprintf(stderr, "tokenwatch-collector: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "tokenwatch-collector --listen HOST:PORT --db PATH\n"
      "                     [--tls-cert F --tls-key F [--tls-client-ca F]]\n"
      "Receives tokenwatch findings from agents and serves them to tokenwatchctl.");
  std::vector<std::string> arg_storage;
  std::vector<char*> dashed = DashesToUnderscores(argc, argv, &arg_storage);
  std::vector<char*> args = absl::ParseCommandLine(static_cast<int>(dashed.size()), dashed.data());
  if (args.size() > 1) return Fail(absl::StrCat("unexpected argument '", args[1], "'"));

  const std::string listen = absl::GetFlag(FLAGS_listen);
  const size_t colon = listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return Fail(absl::StrCat("--listen: expected HOST:PORT, got '", listen, "'"));
  }
  const std::string host = listen.substr(0, colon);

  // TLS files are read before anything else starts, so a typo fails fast with its name.
  std::optional<tokenwatch::collector::ServerTls> tls;
  const std::string tls_cert = absl::GetFlag(FLAGS_tls_cert);
  const std::string tls_key = absl::GetFlag(FLAGS_tls_key);
  const std::string tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (tls_cert.empty() != tls_key.empty()) {
    return Fail("--tls-cert and --tls-key must be given together");
  }
  if (!tls_client_ca.empty() && tls_cert.empty()) {
    return Fail("--tls-client-ca needs --tls-cert and --tls-key");
  }
  if (!tls_cert.empty()) {
    tls.emplace();
    for (auto [flag, path, out] :
         {std::tuple<const char*, const std::string*, std::string*>{"--tls-cert", &tls_cert,
                                                                     &tls->cert_chain},
          {"--tls-key", &tls_key, &tls->private_key},
          {"--tls-client-ca", &tls_client_ca, &tls->client_ca}}) {
      if (!path->empty() && !ReadFile(*path, out)) {
        return Fail(absl::StrCat(flag, " ", *path, ": cannot read the file"));
      }
    }
  }

  const std::string db_path = absl::GetFlag(FLAGS_db);
  if (db_path.empty()) return Fail("--db: empty path");
  // The default lives under /var/lib/tokenwatch, which a fresh node does not have yet.
  std::filesystem::path parent = std::filesystem::path(db_path).parent_path();
  if (!parent.empty()) {
    std::error_code ignored;  // Open below reports the real problem with a clearer message.
    std::filesystem::create_directories(parent, ignored);
  }
  absl::StatusOr<std::unique_ptr<tokenwatch::collector::FindingStore>> store =
      tokenwatch::collector::FindingStore::Open(db_path);
  if (!store.ok()) return Fail(std::string(store.status().message()));
  absl::StatusOr<std::unique_ptr<tokenwatch::collector::ProfileStore>> profiles =
      tokenwatch::collector::ProfileStore::Open(db_path);
  if (!profiles.ok()) return Fail(std::string(profiles.status().message()));

  // Block the stop signals before gRPC starts its threads, so that they all inherit the mask
  // and only sigwait below receives them; shutting a server down is not async-signal-safe.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // Metrics before the gRPC server, so that the first stream is counted. An address the
  // operator chose must work; when the default port is taken (a second collector on a
  // host, a test) the collector runs on without metrics and says so: its scrape target
  // then reads as down, which is what the TokenwatchCollectorDown alert is for.
  auto metrics = std::make_unique<tokenwatch::collector::CollectorMetrics>(db_path);
  std::unique_ptr<tokenwatch::metrics::HttpServer> metrics_server;
  const std::string metrics_address = absl::GetFlag(FLAGS_metrics_address);
  if (!metrics_address.empty()) {
    absl::StatusOr<std::unique_ptr<tokenwatch::metrics::HttpServer>> started =
        tokenwatch::metrics::HttpServer::Start(metrics_address, metrics->collectables(),
                                               /*health=*/nullptr);
    if (started.ok()) {
      metrics_server = *std::move(started);
    } else if (metrics_address != kDefaultMetricsAddress) {
      return Fail(std::string(started.status().message()));
    } else {
      std::fprintf(stderr, "tokenwatch-collector: warning: %s; serving no metrics\n",
                   std::string(started.status().message()).c_str());
    }
  }

  tokenwatch::collector::CollectorService::Options service_options;
  service_options.verify_node_names = tls.has_value() && !tls->client_ca.empty();
  service_options.metrics = metrics.get();
  service_options.profiles = profiles->get();
  tokenwatch::collector::CollectorService service(store->get(), service_options);
  absl::StatusOr<tokenwatch::collector::RunningServer> server =
      tokenwatch::collector::StartServer(listen, &service, tls ? &*tls : nullptr);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  std::printf("listening on %s:%d%s\n", host.c_str(), server->port,
              !tls ? "" : service_options.verify_node_names ? " (TLS, client certificates required)"
                                                            : " (TLS)");
  if (metrics_server != nullptr) {
    const size_t metrics_colon = metrics_address.rfind(':');
    std::printf("metrics on %s:%d\n", metrics_address.substr(0, metrics_colon).c_str(),
                metrics_server->port());
  }
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  std::fprintf(stderr, "tokenwatch-collector: %s, shutting down\n", strsignal(signal_number));
  // Give open Report streams a moment to flush their last acks, then cancel them.
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server->server->Wait();
  return 0;
}
