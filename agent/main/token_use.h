#pragma once

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "agent/detect/correlator.h"
#include "agent/detect/token_read.h"
#include "agent/k8s/apiserver.h"
#include "agent/main/config.h"
#include "agent/probes/process_probe.h"
#include "agent/probes/token_use_probe.h"
#include "agent/process/lineage.h"
#include "agent/process/proc_reader.h"
#include "agent/tokens/inventory.h"

namespace tokenwatch::agent {

// The read-to-use stage of the agent: owns the token_use probe, the API
// server discovery and the correlator; turns unexpected reads into kernel
// taint, and connections and command-line tokens into findings.
//
// Threading: everything on the event thread.
class TokenUse {
 public:
  struct Deps {
    const AgentConfig* config;
    probes::ProcessProbe* processes;
    const process::LineageBuilder* lineage;
    const process::BootClock* clock;
    // The inventoried token with this digest, if any.
    std::function<std::optional<tokens::TokenInfo>(const std::string&)> lookup_digest;
    std::function<void(process::ProcessView*)> name_pod;
    std::function<void(const v1::Finding&)> raise;
    // A folded finding sent again with its grown count (same id) when its
    // window closes: to export, not to count as a new finding. Required.
    std::function<void(const v1::Finding&)> resend;
    // A read token was used (TW010, TW011), folded or not: see
    // detect::Correlator::Options::on_token_used. Optional.
    std::function<void(const std::string& rule_id, const detect::TokenRead& read)> token_used;
    // Counts one kernel record of this type ("connect", "argv_token").
    std::function<void(const std::string&)> count_record;
    // Policy or baseline: may this container process call the API server?
    std::function<bool(const process::ProcessView&)> apiserver_contact_expected;
    std::string hook_mode;
  };

  static absl::StatusOr<std::unique_ptr<TokenUse>> Create(Deps deps);

  // An unexpected read: taint its processes now; the next Poll() looks back
  // for connections they (or their siblings) made before the taint reached
  // the kernel.
  void OnUnexpectedRead(const detect::TokenRead& read);
  // Drains the probe's ring (without waiting).
  void Poll();
  // Re-resolves the API server every minute; re-sends the folds whose
  // window has closed, if they grew. About once a second.
  void Housekeeping(absl::Time now);
  // At shutdown, after the last Housekeeping: every fold that grew since it
  // was sent, whatever its window, to export so no count is lost.
  std::vector<v1::Finding> FlushAll();

  const std::vector<k8s::IpEndpoint>& apiservers() const { return apiservers_; }
  const std::vector<std::string>& attached() const { return probe_->attached(); }
  // The token_use probe's per-CPU counters (ring_full: connection and argv
  // records lost).
  std::array<uint64_t, TW_STAT_MAX> ReadStats() const { return probe_->ReadStats(); }

 private:
  explicit TokenUse(Deps deps) : deps_(std::move(deps)) {}
  void RefreshDestinations();
  void OnConnect(const tw_connect& event);
  void OnArgvToken(const tw_argv_token& event);
  v1::TargetKind TargetOf(const k8s::IpEndpoint& dest) const;
  // The lineage of a process known only by its key, from the kernel tables.
  std::optional<process::Lineage> LineageOf(const tw_proc_key& key) const;
  // Joins the reads registered since the last call with the connections the
  // kernel remembers, in one walk of its table.
  void LookBack();

  struct PendingLookBack {
    uint64_t read_id = 0;
    std::set<detect::ProcKey> keys;  // the read's tainted processes
    uint64_t since_ns = 0;           // boot clock: connections from here on
  };
  std::vector<PendingLookBack> pending_;

  Deps deps_;
  std::unique_ptr<probes::TokenUseProbe> probe_;
  std::unique_ptr<detect::Correlator> correlator_;
  std::unique_ptr<k8s::ApiServerDiscovery> discovery_;
  std::vector<k8s::IpEndpoint> apiservers_;
  std::vector<k8s::IpEndpoint> metadata_;
  absl::Time next_resolve_ = absl::InfinitePast();
};

// The cloud metadata service: 169.254.169.254:80 and [fd00:ec2::254]:80.
std::vector<k8s::IpEndpoint> MetadataEndpoints();

}  // namespace tokenwatch::agent
