#pragma once

#include <cstdint>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tokenwatch/v1/finding.pb.h"

namespace tokenwatch::collector::testing {

// A UUID that differs per n, so tests can make many distinct findings.
inline std::string TestUuid(uint32_t n) {
  return absl::StrFormat("1b4e28ba-2fa1-11d2-883f-%012x", n);
}

inline void SetTime(google::protobuf::Timestamp* ts, absl::Time t) {
  const int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1000000000);
  ts->set_nanos(static_cast<int32_t>(nanos % 1000000000));
}

// A valid TW002 finding: a process in namespace "attacker" read a token of "payments/api-0".
inline tokenwatch::v1::Finding TestFinding(uint32_t n, absl::Time time = absl::Now()) {
  tokenwatch::v1::Finding f;
  f.set_id(TestUuid(n));
  f.set_node("node-a");
  SetTime(f.mutable_time(), time);
  SetTime(f.mutable_last_seen(), time);
  f.set_count(1);
  f.set_rule_id("TW002");
  f.set_rule_name("token-read-cross-pod");
  f.set_severity(tokenwatch::v1::SEVERITY_CRITICAL);
  f.set_summary("cat in attacker/shell-0 read the token of payments/api-0");
  f.add_mitre("T1528");
  auto* token = f.mutable_token();
  token->set_host_path("/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~projected/t/token");
  token->set_kind(tokenwatch::v1::TOKEN_KIND_PROJECTED);
  token->mutable_owner()->set_namespace_("payments");
  token->mutable_owner()->set_name("api-0");
  token->mutable_owner()->set_uid("uid-1");
  token->set_service_account("api");
  auto* p = f.mutable_process();
  p->set_pid(4242);
  p->set_exe("/bin/cat");
  p->add_argv("cat");
  p->add_argv("/proc/1/root/var/run/secrets/kubernetes.io/serviceaccount/token");
  p->mutable_pod()->set_namespace_("attacker");
  p->mutable_pod()->set_name("shell-0");
  p->set_in_container(true);
  auto* parent = f.add_ancestors();
  parent->set_pid(4200);
  parent->set_exe("/bin/sh");
  parent->add_argv("sh");
  auto* grandparent = f.add_ancestors();
  grandparent->set_pid(1);
  grandparent->set_exe("/usr/bin/containerd-shim-runc-v2");
  f.mutable_access()->set_path(tokenwatch::v1::ACCESS_PATH_SYSCALL);
  f.mutable_access()->set_syscall("openat");
  f.set_hook_mode("fanotify");
  return f;
}

}  // namespace tokenwatch::collector::testing
