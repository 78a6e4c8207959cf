#pragma once

#include <string>

#include "absl/strings/string_view.h"
#include "agent/detect/token_read.h"

namespace tokenwatch::detect {

// What policy and baselines are keyed by: a workload, named without the
// Kubernetes API.
//
// The container's name is not visible to a node agent (cgroups carry only the
// container id, which changes on every restart), so a container is identified
// by its entrypoint executable: the exe of its pid 1 as the container sees it,
// e.g. "/app/controller". It is stable across restarts and rollouts of the
// same image and tells sidecars apart from the main container.
struct WorkloadKey {
  std::string namespace_name;
  std::string workload;         // the pod name with controller suffixes removed
  std::string container;        // entrypoint executable; "" when unknown
  std::string service_account;  // from the token's claims
  std::string pod_name;         // for messages only; not part of the identity

  // "namespace/workload container": the baseline's identity (the service
  // account is a policy selector, not part of the identity).
  std::string Id() const;
};

// The controller's name derived from a pod's name:
//   Deployment   name-<pod-template-hash>-<5-char suffix>   -> name
//   CronJob      name-<scheduled minutes>-<5-char suffix>  -> name
//   DaemonSet, Job, bare ReplicaSet   name-<5-char suffix> -> name
//   StatefulSet  name-<ordinal>                            -> name
//   static pod   name-<node name>                          -> name
// Generated suffixes use Kubernetes' safe alphabet (consonants and the digits
// 2 and 4-9), so ordinary words such as "server" are never taken for one.
// Anything else is returned unchanged.
std::string WorkloadName(absl::string_view pod_name, absl::string_view node_name = "");

// The workload the reader of `read` belongs to: the token owner's pod (for
// TW001 the reader's own pod) and the reader's container entrypoint.
WorkloadKey WorkloadOf(const TokenRead& read, absl::string_view node_name = "");

}  // namespace tokenwatch::detect
