#include "agent/detect/finding_builder.h"

#include <sys/sysmacros.h>
#include <uuid/uuid.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tokenwatch::detect {

google::protobuf::Timestamp ToTimestamp(absl::Time time) {
  google::protobuf::Timestamp ts;
  timespec spec = absl::ToTimespec(time);
  ts.set_seconds(spec.tv_sec);
  ts.set_nanos(static_cast<int32_t>(spec.tv_nsec));
  return ts;
}

absl::Time FromTimestamp(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

std::string NewUuid() {
  uuid_t uuid;
  uuid_generate_random(uuid);
  char text[37];
  uuid_unparse_lower(uuid, text);
  return text;
}

std::string OpenFlagsText(uint32_t flags) {
  // The kernel's own values (asm-generic, which x86 and arm64 use): f_flags
  // holds kernel bits such as O_LARGEFILE that the C library defines as 0.
  // O_CLOEXEC belongs to the descriptor, not the file, so it never shows.
  std::vector<std::string> names;
  switch (flags & 03) {
    case 01:
      names.push_back("O_WRONLY");
      break;
    case 02:
      names.push_back("O_RDWR");
      break;
    default:
      names.push_back("O_RDONLY");
  }
  const std::pair<uint32_t, const char*> bits[] = {
      {0100, "O_CREAT"},          {0200, "O_EXCL"},         {0400, "O_NOCTTY"},
      {01000, "O_TRUNC"},         {02000, "O_APPEND"},      {04000, "O_NONBLOCK"},
      {010000, "O_DSYNC"},        {020000, "FASYNC"},       {040000, "O_DIRECT"},
      {0100000, "O_LARGEFILE"},   {0200000, "O_DIRECTORY"}, {0400000, "O_NOFOLLOW"},
      {01000000, "O_NOATIME"},    {02000000, "O_CLOEXEC"},  {04000000, "O_SYNC"},
      {010000000, "O_PATH"},      {020000000, "O_TMPFILE"},
  };
  for (const auto& [bit, name] : bits) {
    if ((flags & bit) == bit) names.push_back(name);
  }
  return absl::StrJoin(names, "|");
}

void FillToken(const tokens::TokenInfo& token, v1::Token* out) {
  out->set_host_path(token.host_path);
  switch (token.kind) {
    case tokens::TokenKind::kProjected:
      out->set_kind(v1::TOKEN_KIND_PROJECTED);
      break;
    case tokens::TokenKind::kSecret:
      out->set_kind(v1::TOKEN_KIND_SECRET);
      break;
    case tokens::TokenKind::kConfigured:
      out->set_kind(v1::TOKEN_KIND_CONFIGURED);
      break;
  }
  v1::Pod* owner = out->mutable_owner();
  owner->set_namespace_(token.claims.namespace_name);
  owner->set_name(token.claims.pod_name);
  owner->set_uid(!token.pod_uid.empty() ? token.pod_uid : token.claims.pod_uid);
  out->set_service_account(token.claims.service_account);
  if (token.claims.expiry.has_value()) {
    *out->mutable_expiry() = ToTimestamp(*token.claims.expiry);
  }
  for (const std::string& aud : token.claims.audiences) out->add_audiences(aud);
  out->set_device(absl::StrCat(token.id.dev >> 20, ":", token.id.dev & 0xfffff));
  out->set_inode(token.id.ino);
}

void FillProcess(const std::string& node, const process::ProcessView& view,
                 const tokens::TokenInfo* token, v1::Process* out) {
  out->set_pid(view.pid);
  out->set_ppid(view.ppid);
  out->set_exec_id(process::ExecId(node, view));
  out->set_exe(view.exe);
  for (const std::string& arg : view.argv) out->add_argv(arg);
  out->set_comm(view.comm);
  out->set_uid(view.uid);
  out->set_gid(view.gid);
  if (view.start_time != absl::InfinitePast()) {
    *out->mutable_start_time() = ToTimestamp(view.start_time);
  }
  out->set_cgroup(view.cgroup);
  out->set_exec_session(view.exec_session);
  out->set_from_exec(view.from_exec);
  if (view.container.has_value()) {
    out->set_in_container(true);
    out->set_container_id(view.container->container_id);
    v1::Pod* pod = out->mutable_pod();
    pod->set_uid(view.container->pod_uid);
    // Without the Kubernetes API, a pod's name and namespace are known from
    // its tokens' claims: the enrich stage looked them up, or the token at
    // hand names its owner.
    if (!view.pod_name.empty()) {
      pod->set_namespace_(view.pod_namespace);
      pod->set_name(view.pod_name);
    } else if (token != nullptr && token->pod_uid == view.container->pod_uid) {
      pod->set_namespace_(token->claims.namespace_name);
      pod->set_name(token->claims.pod_name);
    }
  }
}

v1::Finding BuildTokenReadFinding(const std::string& node, const std::string& hook_mode,
                                  const TokenRead& read, const std::string& rule_id,
                                  const std::string& rule_name, v1::Severity severity,
                                  const std::string& summary) {
  v1::Finding f;
  f.set_id(NewUuid());
  f.set_node(node);
  *f.mutable_time() = ToTimestamp(read.time);
  *f.mutable_last_seen() = ToTimestamp(read.time);
  f.set_count(1);
  f.set_rule_id(rule_id);
  f.set_rule_name(rule_name);
  f.set_severity(severity);
  f.set_summary(summary);
  f.add_mitre("T1528");
  FillToken(read.token, f.mutable_token());
  FillProcess(node, read.lineage.process, &read.token, f.mutable_process());
  for (const process::ProcessView& ancestor : read.lineage.ancestors) {
    FillProcess(node, ancestor, &read.token, f.add_ancestors());
  }
  f.set_ancestors_truncated(read.lineage.truncated);
  v1::Access* access = f.mutable_access();
  access->set_path(read.io_uring ? v1::ACCESS_PATH_IO_URING : v1::ACCESS_PATH_SYSCALL);
  access->set_syscall(read.syscall);
  access->set_flags(read.flags);
  access->set_flags_text(OpenFlagsText(read.flags));
  *access->mutable_time() = ToTimestamp(read.time);
  f.set_hook_mode(hook_mode);
  return f;
}

}  // namespace tokenwatch::detect
