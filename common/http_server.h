#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/collectable.h"

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
  // Why the token inventory cannot be read right now ("" once it can again):
  // a node whose kubelet root vanished is a node where new tokens go unseen,
  // so it must not look ready.
  void SetInventoryProblem(std::string problem) ABSL_LOCKS_EXCLUDED(mu_);
  // "" when ready, else why not.
  std::string NotReadyReason() const ABSL_LOCKS_EXCLUDED(mu_);
  // "" when alive, else why not.
  std::string NotAliveReason(absl::Duration max_silence) const;

 private:
  std::atomic<int64_t> last_heartbeat_ns_{0};
  std::atomic<bool> probes_attached_{false};
  std::atomic<bool> inventory_loaded_{false};
  mutable absl::Mutex mu_;
  std::string inventory_problem_ ABSL_GUARDED_BY(mu_);
};

// Why `dir` cannot serve as the kubelet root right now ("" when it can): it
// is gone, not a directory, or cannot be listed. One stat and one opendir.
std::string DirectoryProblem(const std::string& dir);

// Serves /metrics (prometheus-cpp's text serializer over every collectable,
// e.g. a prometheus::Registry) and, when `health` is given, /healthz and
// /readyz on one address, with civetweb (the HTTP server prometheus-cpp itself
// uses). Owns the server threads; stops them on destruction. The collectables
// and `health` must outlive the server.
class HttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Collectable> collectable,
      const Health* health);
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const std::string& address,
      std::vector<std::shared_ptr<prometheus::Collectable>> collectables, const Health* health);
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
