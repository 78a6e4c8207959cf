// tokenwatch-collector: receives findings from agents over gRPC, stores them in SQLite and
// serves queries (tokenwatchctl).

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "collector/service.h"
#include "collector/store.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:9760",
          "HOST:PORT to serve gRPC on; port 0 picks a free port (printed at start)");
ABSL_FLAG(std::string, db, "/var/lib/tokenwatch/collector.db", "SQLite database file");

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "tokenwatch-collector: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "tokenwatch-collector --listen HOST:PORT --db PATH\n"
      "Receives tokenwatch findings from agents and serves them to tokenwatchctl.");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() > 1) return Fail(absl::StrCat("unexpected argument '", args[1], "'"));

  const std::string listen = absl::GetFlag(FLAGS_listen);
  const size_t colon = listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return Fail(absl::StrCat("--listen: expected HOST:PORT, got '", listen, "'"));
  }
  const std::string host = listen.substr(0, colon);

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

  // Block the stop signals before gRPC starts its threads, so that they all inherit the mask
  // and only sigwait below receives them; shutting a server down is not async-signal-safe.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  tokenwatch::collector::CollectorService service(store->get());
  absl::StatusOr<tokenwatch::collector::RunningServer> server =
      tokenwatch::collector::StartServer(listen, &service);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  std::printf("listening on %s:%d\n", host.c_str(), server->port);
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  std::fprintf(stderr, "tokenwatch-collector: %s, shutting down\n", strsignal(signal_number));
  // Give open Report streams a moment to flush their last acks, then cancel them.
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server->server->Wait();
  return 0;
}
