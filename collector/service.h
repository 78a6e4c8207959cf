#pragma once

#include <memory>
#include <string>

#include <grpcpp/server.h>

#include "absl/status/statusor.h"
#include "collector/collector_metrics.h"
#include "collector/ingest.h"
#include "collector/profile_service.h"
#include "collector/profile_store.h"
#include "collector/store.h"
#include "tokenwatch/v1/collector.grpc.pb.h"

namespace tokenwatch::collector {

// The largest request the collector accepts. A finding is bounded by validation (4 KiB strings,
// 256 argv entries, 64 ancestors, 1024 connections) to well under this.
inline constexpr int kMaxReceiveMessageBytes = 4 * 1024 * 1024;

// The callback service with Report taking raw bytes: a typed callback reader cannot tell a
// request that failed to parse from the client's half-close (both end the read with ok=false),
// so the Report reactor parses each message itself and answers garbage with INVALID_ARGUMENT
// instead of a clean end of stream.
using CollectorCallbackBase = tokenwatch::v1::Collector::WithRawCallbackMethod_Report<
    tokenwatch::v1::Collector::WithCallbackMethod_ListFindings<
        tokenwatch::v1::Collector::WithCallbackMethod_GetFinding<
            tokenwatch::v1::Collector::WithCallbackMethod_WatchFindings<
                tokenwatch::v1::Collector::WithCallbackMethod_UploadProfiles<
                    tokenwatch::v1::Collector::WithCallbackMethod_ListProfiles<
                        tokenwatch::v1::Collector::Service>>>>>>;

// CollectorService implements tokenwatch.v1.Collector with the callback API: a bidi reactor per
// Report stream, a write reactor per WatchFindings call, the default unary reactor for queries.
// It does not own the store; it owns the group-commit Ingest and the hub that feeds watchers.
// Destroy it only after the server that serves it has shut down.
//
// Threading: gRPC runs the reactions on its own threads, concurrently across streams and for
// reads and writes of one stream; each reactor serialises its state with its own mutex, and
// the store, the ingest and the hub are thread-safe.
class CollectorService final : public CollectorCallbackBase {
 public:
  struct Options {
    // Refuse a Report stream whose Hello names a node that is not the client certificate's
    // common name or one of its subject alternative names, and findings from another node on
    // it. Set when the server requires client certificates.
    bool verify_node_names = false;
    // Where to count findings, rejections, connections and latencies; null
    // counts into a private, unexported set. Must outlive the service.
    CollectorMetrics* metrics = nullptr;
    // Where agents' learned profiles are kept (UploadProfiles, ListProfiles); null answers
    // both with UNIMPLEMENTED. Must outlive the service.
    ProfileStore* profiles = nullptr;
  };

  explicit CollectorService(FindingStore* store) : CollectorService(store, Options()) {}
  CollectorService(FindingStore* store, Options options)
      : store_(store),
        options_(options),
        own_metrics_(options.metrics == nullptr ? std::make_unique<CollectorMetrics>() : nullptr),
        metrics_(options.metrics != nullptr ? options.metrics : own_metrics_.get()),
        ingest_(store, &hub_),
        profile_rpcs_(options.profiles, options.verify_node_names, metrics_) {}

  // Each message is a serialized ReportRequest; each answer a serialized ReportResponse.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Report(
      grpc::CallbackServerContext* context) override;

  grpc::ServerUnaryReactor* ListFindings(grpc::CallbackServerContext* context,
                                         const tokenwatch::v1::ListFindingsRequest* request,
                                         tokenwatch::v1::ListFindingsResponse* response) override;

  grpc::ServerUnaryReactor* GetFinding(grpc::CallbackServerContext* context,
                                       const tokenwatch::v1::GetFindingRequest* request,
                                       tokenwatch::v1::Finding* response) override;

  grpc::ServerWriteReactor<tokenwatch::v1::Finding>* WatchFindings(
      grpc::CallbackServerContext* context,
      const tokenwatch::v1::WatchFindingsRequest* request) override;

  // Learned profiles: collector/profile_service.h.
  grpc::ServerUnaryReactor* UploadProfiles(
      grpc::CallbackServerContext* context, const tokenwatch::v1::UploadProfilesRequest* request,
      tokenwatch::v1::UploadProfilesResponse* response) override {
    return profile_rpcs_.Upload(context, request, response);
  }
  grpc::ServerUnaryReactor* ListProfiles(grpc::CallbackServerContext* context,
                                         const tokenwatch::v1::ListProfilesRequest* request,
                                         tokenwatch::v1::ListProfilesResponse* response) override {
    return profile_rpcs_.List(context, request, response);
  }

 private:
  FindingStore* const store_;
  const Options options_;
  const std::unique_ptr<CollectorMetrics> own_metrics_;
  CollectorMetrics* const metrics_;
  FindingHub hub_;
  Ingest ingest_;  // after hub_: it publishes to it until destroyed
  ProfileRpcs profile_rpcs_;
};

// TLS for the server, as PEM text.
struct ServerTls {
  std::string cert_chain;
  std::string private_key;
  // When set, clients must present a certificate signed by this CA.
  std::string client_ca;
};

// A started gRPC server and the port it bound.
struct RunningServer {
  std::unique_ptr<grpc::Server> server;
  // The real port, also when `listen` asked for port 0.
  int port = 0;
};

// Builds and starts a server for `service` on `listen` ("HOST:PORT", IPv6 hosts in brackets),
// with the receive size limit above, over TLS when `tls` is given. Fails when the address cannot
// be bound.
absl::StatusOr<RunningServer> StartServer(const std::string& listen, CollectorService* service,
                                          const ServerTls* tls = nullptr);

}  // namespace tokenwatch::collector
