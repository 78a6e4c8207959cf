#include "agent/detect/workload.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tokenwatch::detect {
namespace {

// Kubernetes' rand.String and SafeEncodeString alphabet: no vowels, no 0, 1
// or 3, so that generated names never spell words.
bool InSafeAlphabet(absl::string_view s) {
  static constexpr absl::string_view kAlphabet = "bcdfghjklmnpqrstvwxz2456789";
  for (char c : s) {
    if (kAlphabet.find(c) == absl::string_view::npos) return false;
  }
  return !s.empty();
}

bool AllDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(c)) return false;
  }
  return true;
}

// Splits "a-b-c" into ("a-b", "c"); false when there is no dash or the head
// would be empty.
bool SplitLast(absl::string_view name, absl::string_view* head, absl::string_view* tail) {
  size_t dash = name.rfind('-');
  if (dash == absl::string_view::npos || dash == 0 || dash + 1 == name.size()) return false;
  *head = name.substr(0, dash);
  *tail = name.substr(dash + 1);
  return true;
}

}  // namespace

std::string WorkloadKey::Id() const {
  return absl::StrCat(namespace_name, "/", workload, " ", container);
}

std::string WorkloadName(absl::string_view pod_name, absl::string_view node_name) {
  // A static (mirror) pod is named <manifest name>-<node name>.
  if (!node_name.empty() && pod_name.size() > node_name.size() + 1 &&
      absl::EndsWith(pod_name, node_name) &&
      pod_name[pod_name.size() - node_name.size() - 1] == '-') {
    return std::string(pod_name.substr(0, pod_name.size() - node_name.size() - 1));
  }
  absl::string_view head, tail;
  if (!SplitLast(pod_name, &head, &tail)) return std::string(pod_name);
  if (tail.size() == 5 && InSafeAlphabet(tail) && !AllDigits(tail)) {
    // A generated suffix. Deployment (pod-template-hash, 1-10 safe characters;
    // we require 6 so that short words like "cni" survive) and CronJob
    // (scheduled time in minutes) pods carry one more segment.
    absl::string_view head2, tail2;
    if (SplitLast(head, &head2, &tail2)) {
      bool template_hash = tail2.size() >= 6 && tail2.size() <= 10 && InSafeAlphabet(tail2);
      bool cron_minutes = tail2.size() >= 8 && tail2.size() <= 10 && AllDigits(tail2);
      if (template_hash || cron_minutes) return std::string(head2);
    }
    return std::string(head);
  }
  // StatefulSet ordinal: decimal without leading zeros.
  if (AllDigits(tail) && tail.size() <= 6 && (tail.size() == 1 || tail[0] != '0')) {
    return std::string(head);
  }
  return std::string(pod_name);
}

WorkloadKey WorkloadOf(const TokenRead& read, absl::string_view node_name) {
  WorkloadKey key;
  const tokens::Claims& claims = read.token.claims;
  key.namespace_name = claims.namespace_name;
  key.pod_name = claims.pod_name;
  // Legacy Secret tokens carry no pod name; the reader's view may have it
  // (from another token of the same pod), else the pod UID is all there is.
  const process::ProcessView& reader = read.lineage.process;
  if (key.pod_name.empty() && reader.container.has_value() &&
      reader.container->pod_uid == read.token.pod_uid) {
    key.pod_name = reader.pod_name;
  }
  key.workload = key.pod_name.empty() ? absl::StrCat("pod-", read.token.pod_uid)
                                      : WorkloadName(key.pod_name, node_name);
  key.container = read.entrypoint_exe;
  key.service_account = claims.service_account;
  return key;
}

}  // namespace tokenwatch::detect
