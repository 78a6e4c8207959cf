#include "common/http_server.h"

#include <CivetServer.h>
#include <dirent.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "prometheus/text_serializer.h"

namespace tokenwatch::metrics {
namespace {

void Reply(mg_connection* conn, int code, const char* content_type, const std::string& body) {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n",
            code, code == 200 ? "OK" : "Service Unavailable", content_type, body.size());
  mg_write(conn, body.data(), body.size());
}

class MetricsHandler : public CivetHandler {
 public:
  explicit MetricsHandler(std::vector<std::shared_ptr<prometheus::Collectable>> collectables)
      : collectables_(std::move(collectables)) {}
  bool handleGet(CivetServer*, mg_connection* conn) override {
    std::vector<prometheus::MetricFamily> families;
    for (const auto& c : collectables_) {
      std::vector<prometheus::MetricFamily> more = c->Collect();
      families.insert(families.end(), std::make_move_iterator(more.begin()),
                      std::make_move_iterator(more.end()));
    }
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, families);
    Reply(conn, 200, "text/plain; version=0.0.4; charset=utf-8", out.str());
    return true;
  }

 private:
  const std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
};

class ProbeHandler : public CivetHandler {
 public:
  ProbeHandler(const Health* health, bool readiness) : health_(health), readiness_(readiness) {}
  bool handleGet(CivetServer*, mg_connection* conn) override {
    std::string reason = readiness_ ? health_->NotReadyReason()
                                    : health_->NotAliveReason(absl::Seconds(30));
    if (reason.empty()) {
      Reply(conn, 200, "text/plain", "ok\n");
    } else {
      Reply(conn, 503, "text/plain", reason + "\n");
    }
    return true;
  }

 private:
  const Health* health_;
  bool readiness_;
};

}  // namespace

void Health::Heartbeat() { last_heartbeat_ns_ = absl::GetCurrentTimeNanos(); }
void Health::SetProbesAttached(bool attached) { probes_attached_ = attached; }
void Health::SetInventoryLoaded(bool loaded) { inventory_loaded_ = loaded; }

void Health::SetInventoryProblem(std::string problem) {
  absl::MutexLock lock(&mu_);
  inventory_problem_ = std::move(problem);
}

std::string Health::NotReadyReason() const {
  if (!probes_attached_) return "probes not attached";
  if (!inventory_loaded_) return "token inventory not loaded";
  absl::MutexLock lock(&mu_);
  if (!inventory_problem_.empty()) {
    return absl::StrCat("token inventory unreadable: ", inventory_problem_);
  }
  return "";
}

std::string DirectoryProblem(const std::string& dir) {
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0) return absl::StrCat(dir, ": ", std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) return absl::StrCat(dir, ": not a directory");
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return absl::StrCat(dir, ": ", std::strerror(errno));
  closedir(d);
  return "";
}

std::string Health::NotAliveReason(absl::Duration max_silence) const {
  int64_t last = last_heartbeat_ns_;
  if (last == 0) return "event loop not started";
  absl::Duration silence = absl::Nanoseconds(absl::GetCurrentTimeNanos() - last);
  if (silence > max_silence) {
    return absl::StrCat("event loop silent for ", absl::FormatDuration(silence));
  }
  return "";
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const std::string& address, std::shared_ptr<prometheus::Collectable> collectable,
    const Health* health) {
  return Start(address, std::vector<std::shared_ptr<prometheus::Collectable>>{collectable},
               health);
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const std::string& address,
    std::vector<std::shared_ptr<prometheus::Collectable>> collectables, const Health* health) {
  std::unique_ptr<HttpServer> server(new HttpServer());
  std::string ports = address;
  // civetweb spells IPv6 listeners "[::1]:9750" too; a bare ":9750" means all.
  if (!ports.empty() && ports[0] == ':') ports = ports.substr(1);
  std::vector<std::string> options = {"listening_ports", ports, "num_threads", "2"};
  // civetweb reports a failed bind by throwing; this is the boundary where
  // that becomes a Status.
  try {
    server->server_ = std::make_unique<CivetServer>(options);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-address ", address, ": cannot listen (", e.what(), ")"));
  }
  server->metrics_ = std::make_unique<MetricsHandler>(std::move(collectables));
  server->server_->addHandler("/metrics", server->metrics_.get());
  if (health != nullptr) {
    server->healthz_ = std::make_unique<ProbeHandler>(health, false);
    server->readyz_ = std::make_unique<ProbeHandler>(health, true);
    server->server_->addHandler("/healthz", server->healthz_.get());
    server->server_->addHandler("/readyz", server->readyz_.get());
  }
  std::vector<int> bound = server->server_->getListeningPorts();
  if (!bound.empty()) server->port_ = bound[0];
  return server;
}

HttpServer::~HttpServer() {
  if (server_ != nullptr) server_->close();
}

}  // namespace tokenwatch::metrics
