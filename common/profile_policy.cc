#include "common/profile_policy.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/wire_time.h"
#include "yaml-cpp/yaml.h"

namespace tokenwatch::profiles {
namespace {

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime(absl::RFC3339_full, t, absl::UTCTimeZone());
}

void AddExecutables(const google::protobuf::RepeatedPtrField<v1::LearnedExecutable>& from,
                    std::set<std::string>* into) {
  for (const v1::LearnedExecutable& exe : from) into->insert(exe.path());
}

void SetExecutables(const std::set<std::string>& paths,
                    google::protobuf::RepeatedPtrField<v1::LearnedExecutable>* out) {
  out->Clear();
  for (const std::string& path : paths) out->Add()->set_path(path);
}

// Where and when one merged profile was learned, for the comment after its entry.
std::string Provenance(const WorkloadProfile& w) {
  std::string where;
  if (!w.nodes.empty()) {
    constexpr size_t kNamed = 5;  // a DaemonSet's profile may come from hundreds of nodes
    std::vector<std::string> named(w.nodes.begin(),
                                   w.nodes.begin() + std::min(kNamed, w.nodes.size()));
    where =
        absl::StrCat("learned on ", w.nodes.size(), w.nodes.size() == 1 ? " node (" : " nodes (",
                     absl::StrJoin(named, ", "), w.nodes.size() > kNamed ? ", ..." : "", "); ");
  }
  std::string state;
  if (w.still_learning == 0) {
    state = w.merged.learning_disabled() ? "learning off" : "learning complete";
  } else if (w.copies > 1) {
    state = absl::StrCat("learning still open on ", w.still_learning, " of ", w.copies,
                         " nodes, until ", Rfc3339(TimeOf(w.merged.learning_ends())));
  } else {
    state = absl::StrCat("learning still open, until ", Rfc3339(TimeOf(w.merged.learning_ends())));
  }
  std::string text =
      absl::StrCat(where, "first seen ", Rfc3339(TimeOf(w.merged.learning_started())), "; ", state);
  // A comment is one line: a control character in a node name must not end it early and
  // start a line of YAML.
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  return text;
}

bool HasControl(const std::string& text) {
  for (char c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return true;
  }
  return false;
}

absl::Status Invalid(const std::string& field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

absl::Status ValidateExecutables(
    const std::string& field,
    const google::protobuf::RepeatedPtrField<v1::LearnedExecutable>& list) {
  if (list.size() > kMaxExecutablesPerList) {
    return Invalid(field, absl::StrCat("more than ", kMaxExecutablesPerList, " entries"));
  }
  for (int i = 0; i < list.size(); ++i) {
    if (absl::Status s = ValidatePath(absl::StrCat(field, "[", i, "].path"), list[i].path(),
                                      /*required=*/true);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidatePath(const std::string& field, const std::string& path, bool required) {
  if (path.empty()) return required ? Invalid(field, "empty") : absl::OkStatus();
  if (path.size() > kMaxPathBytes) {
    return Invalid(field, absl::StrCat("longer than ", kMaxPathBytes, " bytes"));
  }
  if (HasControl(path)) return Invalid(field, "contains a control character");
  return absl::OkStatus();
}

absl::Status ValidateName(const std::string& field, const std::string& value, bool required) {
  if (value.empty()) return required ? Invalid(field, "empty") : absl::OkStatus();
  if (value.size() > kMaxNameBytes) {
    return Invalid(field, absl::StrCat("longer than ", kMaxNameBytes, " bytes"));
  }
  if (HasControl(value)) return Invalid(field, "contains a control character");
  return absl::OkStatus();
}

absl::Status ValidateProfile(const v1::LearnedProfile& p, const std::string& field,
                             absl::Time now) {
  for (auto [name, value, required] :
       {std::tuple<const char*, const std::string*, bool>{"namespace", &p.namespace_(), true},
        {"workload", &p.workload(), true},
        {"service_account", &p.service_account(), false},
        {"node", &p.node(), false}}) {
    if (absl::Status s = ValidateName(absl::StrCat(field, ".", name), *value, required); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = ValidatePath(absl::StrCat(field, ".container"), p.container(), false);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          ValidateExecutables(absl::StrCat(field, ".token_readers"), p.token_readers());
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          ValidateExecutables(absl::StrCat(field, ".apiserver_clients"), p.apiserver_clients());
      !s.ok()) {
    return s;
  }
  const std::string started = absl::StrCat(field, ".learning_started");
  const std::string ends = absl::StrCat(field, ".learning_ends");
  if (!p.has_learning_started()) return Invalid(started, "not set");
  if (!p.has_learning_ends()) return Invalid(ends, "not set");
  // The window's end is the agent's arithmetic (start plus the configured learning window),
  // not something it observed, so only its form and order are checked.
  if (absl::Status s = ValidateObservedTime(started, p.learning_started(), now); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateTimestamp(ends, p.learning_ends()); !s.ok()) return s;
  if (TimeOf(p.learning_ends()) < TimeOf(p.learning_started())) {
    return Invalid(ends, "before learning_started");
  }
  return absl::OkStatus();
}

absl::Time TimeOf(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

void SetTime(absl::Time t, google::protobuf::Timestamp* ts) {
  const int64_t nanos = absl::ToUnixNanos(t);
  int64_t seconds = nanos / 1000000000;
  int64_t rest = nanos % 1000000000;
  if (rest < 0) {  // Timestamp's nanos are never negative
    rest += 1000000000;
    --seconds;
  }
  ts->set_seconds(seconds);
  ts->set_nanos(static_cast<int32_t>(rest));
}

bool StillLearning(const v1::LearnedProfile& profile, absl::Time now) {
  return !profile.learning_disabled() && now < TimeOf(profile.learning_ends());
}

std::vector<WorkloadProfile> MergeProfiles(const std::vector<v1::LearnedProfile>& profiles,
                                           absl::Time now) {
  struct Group {
    WorkloadProfile out;
    std::set<std::string> readers;
    std::set<std::string> clients;
    std::set<std::string> nodes;
    std::set<std::string> accounts;
    bool disabled = true;  // only when every copy says so
  };
  std::map<std::tuple<std::string, std::string, std::string>, Group> groups;
  for (const v1::LearnedProfile& p : profiles) {
    Group& g = groups[{p.namespace_(), p.workload(), p.container()}];
    v1::LearnedProfile& m = g.out.merged;
    if (g.out.copies == 0) {
      m.set_namespace_(p.namespace_());
      m.set_workload(p.workload());
      m.set_container(p.container());
      *m.mutable_learning_started() = p.learning_started();
      *m.mutable_learning_ends() = p.learning_ends();
    } else {
      if (TimeOf(p.learning_started()) < TimeOf(m.learning_started())) {
        *m.mutable_learning_started() = p.learning_started();
      }
      if (TimeOf(p.learning_ends()) > TimeOf(m.learning_ends())) {
        *m.mutable_learning_ends() = p.learning_ends();
      }
    }
    ++g.out.copies;
    if (StillLearning(p, now)) ++g.out.still_learning;
    g.disabled = g.disabled && p.learning_disabled();
    AddExecutables(p.token_readers(), &g.readers);
    AddExecutables(p.apiserver_clients(), &g.clients);
    if (!p.node().empty()) g.nodes.insert(p.node());
    g.accounts.insert(p.service_account());
  }
  std::vector<WorkloadProfile> out;
  out.reserve(groups.size());
  for (auto& [key, g] : groups) {
    v1::LearnedProfile& m = g.out.merged;
    SetExecutables(g.readers, m.mutable_token_readers());
    SetExecutables(g.clients, m.mutable_apiserver_clients());
    m.set_learning_disabled(g.disabled);
    // Copies that disagree (a rollout changed the account) would make one selector wrong for
    // some pods; no selector is the honest merge.
    if (g.accounts.size() == 1) m.set_service_account(*g.accounts.begin());
    g.out.nodes.assign(g.nodes.begin(), g.nodes.end());
    out.push_back(std::move(g.out));
  }
  return out;
}

std::string RenderPolicyYaml(const std::vector<WorkloadProfile>& workloads) {
  YAML::Emitter out;
  out << YAML::Comment("Learned by tokenwatch; review, then merge into the agent's --config file.");
  out << YAML::BeginMap << YAML::Key << "policy" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "workloads" << YAML::Value << YAML::BeginSeq;
  for (const WorkloadProfile& w : workloads) {
    const v1::LearnedProfile& p = w.merged;
    out << YAML::BeginMap;
    out << YAML::Key << "namespace" << YAML::Value << p.namespace_();
    out << YAML::Key << "workload" << YAML::Value << p.workload();
    // The learned container is an exact path; a glob that matched more would widen the
    // profile.
    out << YAML::Key << "container" << YAML::Value << (p.container().empty() ? "*" : p.container());
    if (!p.service_account().empty()) {
      out << YAML::Key << "service_account" << YAML::Value << p.service_account();
    }
    out << YAML::Key << "executables" << YAML::Value << YAML::BeginSeq;
    for (const v1::LearnedExecutable& exe : p.token_readers()) {
      // Entries must be full paths; a reader known only by name (it exited before its path
      // was resolved) cannot be exported as an allowlist.
      if (!exe.path().empty() && exe.path()[0] == '/') {
        out << YAML::BeginMap << YAML::Key << "exe" << YAML::Value << exe.path() << YAML::EndMap;
      }
    }
    out << YAML::EndSeq;
    // Only a learned contact is a fact; "false" would also be said by an agent that cannot see
    // connections.
    if (p.apiserver_clients_size() > 0) {
      out << YAML::Key << "apiserver_contact" << YAML::Value << true;
    }
    out << YAML::EndMap;
    out << YAML::Comment(Provenance(w));
  }
  out << YAML::EndSeq << YAML::EndMap << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace tokenwatch::profiles
