#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/registry.h"

class CivetServer;
class CivetHandler;

namespace tokenwatch::metrics {

// What /healthz and /readyz report. Written by the agent's threads, read by
// the HTTP threads; all members are thread-safe.
class Health {
 public:
  // The event loop calls this every turn; /healthz fails when it stops.
  void Heartbeat();
  void SetProbesAttached(bool attached);
  void SetInventoryLoaded(bool loaded);
  // "" when ready, else why not.
  std::string NotReadyReason() const;
  // "" when alive, else why not.
  std::string NotAliveReason(absl::Duration max_silence) const;

 private:
  std::atomic<int64_t> last_heartbeat_ns_{0};
  std::atomic<bool> probes_attached_{false};
  std::atomic<bool> inventory_loaded_{false};
};

// Serves /metrics (prometheus-cpp's text serializer over `registry`),
// /healthz and /readyz on one address, with civetweb (the HTTP server
// prometheus-cpp itself uses). Owns the server threads; stops them on
// destruction.
class HttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry,
      const Health* health);
  ~HttpServer();

  // The bound port (useful with port 0).
  int port() const { return port_; }

 private:
  HttpServer() = default;
  std::unique_ptr<CivetServer> server_;
  std::unique_ptr<CivetHandler> metrics_, healthz_, readyz_;
  int port_ = 0;
};

}  // namespace tokenwatch::metrics
