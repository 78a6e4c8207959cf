#include "agent/main/token_use.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "agent/tokens/redact.h"

namespace tokenwatch::agent {
namespace {

tw_endpoint ToKernel(const k8s::IpEndpoint& ep) {
  tw_endpoint out{};
  out.family = static_cast<uint16_t>(ep.family);
  out.port = ep.port;
  std::memcpy(out.addr, ep.addr, ep.family == AF_INET ? 4 : 16);
  return out;
}

k8s::IpEndpoint FromKernel(const tw_endpoint& ep) {
  k8s::IpEndpoint out;
  out.family = ep.family;
  out.port = ep.port;
  std::memcpy(out.addr, ep.addr, ep.family == AF_INET ? 4 : 16);
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(out.family, out.addr, buf, sizeof(buf));
  out.text = out.family == AF_INET6 ? absl::StrCat("[", buf, "]:", out.port)
                                    : absl::StrCat(buf, ":", out.port);
  return out;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

}  // namespace

std::vector<k8s::IpEndpoint> MetadataEndpoints() {
  std::vector<k8s::IpEndpoint> out;
  for (const char* text : {"169.254.169.254:80", "[fd00:ec2::254]:80"}) {
    if (auto ep = k8s::ParseIpEndpoint(text); ep.ok()) out.push_back(*ep);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<TokenUse>> TokenUse::Create(Deps deps) {
  if (!deps.raise || !deps.resend) {
    return absl::InvalidArgumentError("TokenUse: raise and resend are required");
  }
  std::unique_ptr<TokenUse> use(new TokenUse(std::move(deps)));
  const AgentConfig& config = *use->deps_.config;
  probes::TokenUseProbe::Options options;
  if (const char* btf = std::getenv("TOKENWATCH_BTF_PATH"); btf != nullptr) options.btf_path = btf;
  options.self_tgid = static_cast<uint32_t>(getpid());
  options.procs_fd = use->deps_.processes->procs_fd();
  options.exited_fd = use->deps_.processes->exited_fd();
  options.taint_fd = use->deps_.processes->taint_fd();
  options.lineage_depth = config.lineage_depth;
  options.argv_bytes = config.argv_bytes;
  auto probe = probes::TokenUseProbe::Create(options);
  if (!probe.ok()) return probe.status();
  use->probe_ = *std::move(probe);

  detect::Correlator::Options correlator;
  correlator.node = config.node_name;
  correlator.hook_mode = use->deps_.hook_mode;
  correlator.window = config.correlation_window;
  if (!config.cluster_ranges.empty()) correlator.cluster_ranges = config.cluster_ranges;
  correlator.apiserver_contact_expected = use->deps_.apiserver_contact_expected;
  correlator.on_token_used = use->deps_.token_used;
  use->correlator_ = std::make_unique<detect::Correlator>(correlator);

  k8s::ApiServerDiscovery::Options discovery;
  discovery.flags = config.apiservers;
  discovery.service_host = Env("KUBERNETES_SERVICE_HOST");
  discovery.service_port = Env("KUBERNETES_SERVICE_PORT");
  discovery.kubeconfigs = {"/etc/kubernetes/kubelet.conf",
                           absl::StrCat(config.kubelet_root, "/kubeconfig")};
  use->discovery_ = std::make_unique<k8s::ApiServerDiscovery>(discovery);
  use->metadata_ = MetadataEndpoints();
  use->RefreshDestinations();
  return use;
}

void TokenUse::RefreshDestinations() {
  std::vector<std::string> errors;
  std::vector<k8s::IpEndpoint> found = discovery_->Resolve(&errors);
  for (const std::string& e : errors) Logf(LogLevel::kWarning, "API server address: %s", e);
  bool changed = found.size() != apiservers_.size();
  for (size_t i = 0; !changed && i < found.size(); ++i) changed = !(found[i] == apiservers_[i]);
  apiservers_ = std::move(found);
  std::vector<std::pair<tw_endpoint, uint32_t>> dests;
  std::vector<std::string> names;
  for (const k8s::IpEndpoint& ep : apiservers_) {
    dests.emplace_back(ToKernel(ep), TW_DEST_APISERVER);
    names.push_back(ep.text);
  }
  for (const k8s::IpEndpoint& ep : metadata_) dests.emplace_back(ToKernel(ep), TW_DEST_METADATA);
  if (absl::Status s = probe_->SetWatchedDestinations(dests); !s.ok()) {
    Logf(LogLevel::kWarning, "%s", s.message());
  }
  if (changed || next_resolve_ == absl::InfinitePast()) {
    Logf(LogLevel::kInfo, "API server addresses watched: %s",
         names.empty() ? "none found" : absl::StrJoin(names, ", "));
  }
  next_resolve_ = absl::Now() + absl::Minutes(1);
}

v1::TargetKind TokenUse::TargetOf(const k8s::IpEndpoint& dest) const {
  for (const k8s::IpEndpoint& ep : apiservers_) {
    if (ep == dest) return v1::TARGET_KIND_APISERVER;
  }
  for (const k8s::IpEndpoint& ep : metadata_) {
    if (ep == dest) return v1::TARGET_KIND_METADATA;
  }
  return v1::TARGET_KIND_OTHER;
}

std::optional<process::Lineage> TokenUse::LineageOf(const tw_proc_key& key) const {
  std::optional<tw_proc> actor = deps_.processes->Lookup(key);
  if (!actor.has_value()) return std::nullopt;
  std::vector<tw_proc> ancestors;
  tw_proc_key next = actor->parent;
  bool truncated = false;
  while (next.tgid != 0) {
    if (ancestors.size() >= deps_.config->lineage_depth) {
      truncated = true;
      break;
    }
    std::optional<tw_proc> p = deps_.processes->Lookup(next);
    if (!p.has_value()) break;
    next = p->parent;
    ancestors.push_back(*p);
  }
  process::Lineage lineage = deps_.lineage->FromRecord(
      key.tgid, actor->cgroup_id, *actor, ancestors.data(),
      static_cast<uint32_t>(ancestors.size()), truncated);
  deps_.name_pod(&lineage.process);
  for (process::ProcessView& a : lineage.ancestors) deps_.name_pod(&a);
  return lineage;
}

void TokenUse::OnUnexpectedRead(const detect::TokenRead& read) {
  detect::Correlator::Taint taint = correlator_->OnTokenRead(read);
  const uint64_t window_ns = static_cast<uint64_t>(
      absl::ToInt64Nanoseconds(deps_.config->correlation_window));
  const uint64_t expires_ns = read.kernel_ts_ns + window_ns;
  for (const detect::ProcKey& key : taint.keys) {
    tw_proc_key k{key.first, 0, key.second};
    if (absl::Status s = probe_->Taint(k, taint.read_id, expires_ns, taint.cgroup_id); !s.ok()) {
      Logf(LogLevel::kWarning, "%s", s.message());
    }
  }
  // The look-back waits for the next Poll(): one walk of the kernel's
  // recent-connection table serves every read that arrived meanwhile (an
  // exec session's loop of 2,000 cats costs a walk per poll, not per cat).
  PendingLookBack pending;
  pending.read_id = taint.read_id;
  pending.keys.insert(taint.keys.begin(), taint.keys.end());
  pending.since_ns = read.kernel_ts_ns > window_ns ? read.kernel_ts_ns - window_ns : 0;
  pending_.push_back(std::move(pending));
}

void TokenUse::LookBack() {
  // Connections the tainted processes, or their children and siblings, made
  // before the taint reached the kernel (wget --post-file connects first; in
  // cat token | nc the connector is the reader's sibling).
  std::vector<PendingLookBack> pending = std::move(pending_);
  pending_.clear();
  for (const probes::TokenUseProbe::Recent& r : probe_->RecentConnections()) {
    std::optional<process::Lineage> lineage;
    for (const PendingLookBack& p : pending) {
      bool related = p.keys.count({r.key.tgid, r.key.start_ticks}) > 0 ||
                     p.keys.count({r.conns.parent.tgid, r.conns.parent.start_ticks}) > 0;
      if (!related) continue;
      for (const tw_recent_conn& rc : r.conns.conns) {
        if (rc.ts_ns == 0 || rc.ts_ns < p.since_ns) continue;
        if (!lineage.has_value()) lineage = LineageOf(r.key);
        if (!lineage.has_value()) break;
        detect::Connection c;
        c.time = deps_.clock->ToTime(rc.ts_ns);
        c.dest = FromKernel(rc.dest);
        c.target = TargetOf(c.dest);
        c.lineage = *lineage;
        for (const v1::Finding& f : correlator_->OnConnection(c, p.read_id)) deps_.raise(f);
      }
    }
  }
}

void TokenUse::OnConnect(const tw_connect& event) {
  deps_.count_record("connect");
  detect::Connection c;
  c.time = deps_.clock->ToTime(event.hdr.ts_ns);
  c.dest = FromKernel(event.dest);
  c.target = TargetOf(c.dest);
  c.lineage = deps_.lineage->FromRecord(event.tgid, event.cgroup_id, event.actor, event.ancestors,
                                        event.n_ancestors, event.truncated != 0);
  deps_.name_pod(&c.lineage.process);
  for (process::ProcessView& a : c.lineage.ancestors) deps_.name_pod(&a);
  for (const v1::Finding& f :
       correlator_->OnConnection(c, event.tainted ? event.taint_read_id : 0)) {
    deps_.raise(f);
  }
}

void TokenUse::OnArgvToken(const tw_argv_token& event) {
  deps_.count_record("argv_token");
  // Redact at once; only digests of the JWTs found leave this function.
  std::vector<std::string> digests;
  size_t len = std::min<size_t>(event.argv_len, sizeof(event.argv));
  std::string raw(event.argv, len);
  (void)tokens::RedactJwts(raw, &digests);
  explicit_bzero(raw.data(), raw.size());
  for (const std::string& digest : digests) {
    std::optional<tokens::TokenInfo> token = deps_.lookup_digest(digest);
    if (!token.has_value()) continue;
    std::optional<process::Lineage> lineage = LineageOf(event.key);
    if (!lineage.has_value()) return;
    for (const v1::Finding& f :
         correlator_->OnArgvToken(deps_.clock->ToTime(event.hdr.ts_ns), *token, *lineage)) {
      deps_.raise(f);
    }
    return;
  }
}

void TokenUse::Poll() {
  if (!pending_.empty()) LookBack();
  probes::TokenUseProbe::Handlers handlers;
  handlers.on_connect = [this](const tw_connect& e) { OnConnect(e); };
  handlers.on_argv_token = [this](const tw_argv_token& e) { OnArgvToken(e); };
  auto polled = probe_->Poll(absl::ZeroDuration(), handlers);
  if (!polled.ok()) Logf(LogLevel::kError, "%s", polled.status().message());
}

void TokenUse::Housekeeping(absl::Time now) {
  for (const v1::Finding& f : correlator_->Flush(now)) deps_.resend(f);
  if (now >= next_resolve_) RefreshDestinations();
}

std::vector<v1::Finding> TokenUse::FlushAll() { return correlator_->FlushAll(); }

}  // namespace tokenwatch::agent
