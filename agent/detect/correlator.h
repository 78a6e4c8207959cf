#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "agent/detect/token_read.h"
#include "agent/k8s/apiserver.h"
#include "agent/process/lineage.h"
#include "tokenwatch/v1/finding.pb.h"

namespace tokenwatch::detect {

// A process's identity as the kernel's tables key it: (tgid, start ticks).
using ProcKey = std::pair<uint32_t, uint64_t>;
ProcKey KeyOf(const process::ProcessView& p);
// Whether two processes were in the same cgroup: by cgroup v2 id where both
// are known, else by path; false when neither tells.
bool SameCgroup(const process::ProcessView& a, const process::ProcessView& b);

// An outbound TCP connection and who made it.
struct Connection {
  absl::Time time;
  k8s::IpEndpoint dest;
  v1::TargetKind target = v1::TARGET_KIND_OTHER;
  process::Lineage lineage;  // the connector and its ancestors
};

// Joins token reads with what happens next (DESIGN.md decision 6):
// TW010 token-used-apiserver, TW011 token-egress, TW021
// metadata-service-contact, TW020 apiserver-contact-unexpected (an untainted
// container process whose workload is not expected to call the API server),
// and TW012 token-in-argv.
//
// A read taints the reader and its ancestors inside the container up to,
// not including, the container's init (for a host reader: the reader and
// its parent); the kernel extends the taint to later children and reports
// every connection of a tainted process. The join also looks back: a
// connection made before the read (wget --post-file) or by a sibling
// (cat token | nc) is matched when its process, or its parent, is tainted.
//
// The taint boundary: a taint holds only for connections made in the cgroup
// the reader was in when it read (compared by cgroup v2 id, in the kernel
// and here). A tainted host process's child that `runc exec` or a shim
// moved into a container, a container process's parent on the host, and
// the processes of another container or pod are never joined to the read,
// whatever their names; ancestors outside the reader's cgroup are not
// tainted at all. A connection whose cgroup or reader's cgroup is unknown is
// not joined either: no critical finding rests on a guess.
//
// Folding, as the detector does for reads (agent/detect/detector.h): later
// connections for the same read fold into its open finding; untainted
// TW020/TW021 contacts fold per (rule, pod, exe); TW012 per (pod, exe,
// token). A fold lasts one window (Options::window, the correlation window),
// counted from its first event. Its finding is exported when raised and
// once more when the window closes (same id, final count, last_seen and
// connections) if anything folded in, so a process reconnecting every
// second costs two exports, not one a second.
//
// Threading: not thread-safe; the event thread owns it.
class Correlator {
 public:
  struct Options {
    std::string node;
    std::string hook_mode;
    absl::Duration window = absl::Minutes(10);
    std::vector<std::string> cluster_ranges = k8s::DefaultClusterRanges();
    size_t max_connections_per_finding = 64;
    // Whether contacting the API server is expected of this (untainted)
    // container process: policy or learned baseline. Unset: always.
    std::function<bool(const process::ProcessView&)> apiserver_contact_expected;
    // Called for every connection that uses a read token (TW010, TW011),
    // folded or not, with the read it traces back to: the read finding's
    // severity rises with what its token was used for.
    std::function<void(const std::string& rule_id, const TokenRead& read)> on_token_used;
  };
  struct Taint {
    uint64_t read_id = 0;
    std::vector<ProcKey> keys;
    absl::Time expires;
    // The reader's cgroup v2 id: the taint holds only there (0: unknown,
    // holds nowhere in the kernel).
    uint64_t cgroup_id = 0;
  };

  explicit Correlator(Options options) : options_(std::move(options)) {}

  // Registers an unexpected read; returns the taint to write into the
  // kernel's map.
  Taint OnTokenRead(const TokenRead& read);

  // The read that tainted `p` (directly) and that a connection by
  // `connector` at `at` may be joined to (same cgroup as the reader, within
  // the window), or 0.
  uint64_t TaintedBy(const process::ProcessView& p, const process::ProcessView& connector,
                     absl::Time at) const;

  // A connection: from the kernel (kernel_read_id: the taint it saw, or 0)
  // or found looking back. Returns findings to export now.
  std::vector<v1::Finding> OnConnection(const Connection& c, uint64_t kernel_read_id);

  // A process started with an inventoried token in argv (argv already
  // redacted). Returns the finding to export now, or nothing when it folded
  // into an open one.
  std::vector<v1::Finding> OnArgvToken(absl::Time time, const tokens::TokenInfo& token,
                                       const process::Lineage& lineage);

  // Folds whose window has closed by `now`: the ones that grew since they
  // were exported, to export again (same id, final count: the collector
  // keeps the latest); all of them are forgotten, and so are reads past the
  // window. The agent calls it about once a second.
  std::vector<v1::Finding> Flush(absl::Time now);

  // Every fold that grew since it was exported, whatever its window: for
  // shutdown, so no count is lost. The folds stay open (a later connection
  // still folds into them) and count as exported.
  std::vector<v1::Finding> FlushAll();

  bool InCluster(const k8s::IpEndpoint& ip) const {
    return k8s::InRanges(ip, options_.cluster_ranges);
  }

 private:
  struct Read {
    TokenRead read;
    absl::Time expires;
  };
  struct Fold {
    v1::Finding finding;
    absl::Time first;
    // Events folded in since the finding was last exported.
    bool dirty = false;
  };

  // The open fold at `key` that an event at `at` belongs to, or nullptr. A
  // fold there whose window has closed (Flush has not run since) is retired,
  // its owed re-export kept for the next Flush, so the event opens a new one.
  Fold* OpenFold(const std::string& key, absl::Time at);
  // Counts one more event at `at` into `fold`.
  static void Grow(Fold* fold, absl::Time at);

  // The read a connection belongs to, or nullptr.
  const Read* SourceOf(const Connection& c, uint64_t kernel_read_id, uint64_t* read_id) const;
  v1::Finding Build(const Connection& c, const Read* source, const std::string& rule_id,
                    const std::string& rule_name, v1::Severity severity,
                    const std::string& summary) const;

  Options options_;
  uint64_t next_read_id_ = 1;
  std::map<uint64_t, Read> reads_;
  std::map<ProcKey, uint64_t> tainted_;  // key -> read id (latest)
  absl::flat_hash_map<std::string, Fold> folds_;
  // Grown folds retired by OpenFold, waiting for the next Flush.
  std::vector<v1::Finding> closed_;
  std::set<std::string> seen_;  // connections already handled, for the look-back
};

}  // namespace tokenwatch::detect
