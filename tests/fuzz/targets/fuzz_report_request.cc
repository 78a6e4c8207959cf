// Fuzzes the collector's handling of what a client sends: every Report stream message goes
// through ParseReportRequest before anything is stored, and query filters through
// QueryFromRequest. Neither may crash; an accepted finding must satisfy the invariants the store
// relies on. FindingBytesIn picks the agent's own Finding bytes out of a request for the store:
// whatever it picks must parse to the very finding the request parses to.
#include <cstdint>
#include <cstdlib>
#include <string>

#include <google/protobuf/util/message_differencer.h>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "collector/validate.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seeds = std::getenv("TW_FUZZ_WRITE_SEEDS")) {
    std::string dir = seeds;
    std::system(("mkdir -p '" + dir + "'").c_str());
    tokenwatch::v1::ReportRequest finding;
    finding.mutable_finding()->set_sequence(1);
    auto* f = finding.mutable_finding()->mutable_finding();
    f->set_id("1b4e28ba-2fa1-11d2-883f-0016d3cca427");
    f->set_node("node-a");
    f->mutable_time()->set_seconds(1700000000);
    f->set_count(1);
    f->set_rule_id("TW002");
    f->set_severity(tokenwatch::v1::SEVERITY_HIGH);
    f->mutable_process()->add_argv("cat");
    f->add_connections()->set_port(443);
    tokenwatch::v1::ReportRequest hello;
    hello.mutable_hello()->set_node("node-a");
    hello.mutable_hello()->set_agent_id("agent");
    tokenwatch::v1::ReportRequest gap;
    gap.mutable_gap()->set_through(9);
    int i = 0;
    for (const auto* m : {&finding, &hello, &gap}) {
      FILE* out = std::fopen((dir + "/seed" + std::to_string(i++)).c_str(), "wb");
      if (out == nullptr) continue;
      std::string bytes = m->SerializeAsString();
      std::fwrite(bytes.data(), 1, bytes.size(), out);
      std::fclose(out);
    }
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  const absl::Time now = absl::FromUnixSeconds(1700000000);
  auto request = tokenwatch::collector::ParseReportRequest(bytes, now);
  if (request.ok() && request->has_finding()) {
    const auto& f = request->finding().finding();
    if (request->finding().sequence() == 0 || !tokenwatch::collector::IsUuid(f.id()) ||
        f.count() == 0 || f.node().empty()) {
      std::abort();  // validation let through what the store must never see
    }
  } else if (!request.ok() &&
             request.status().code() != absl::StatusCode::kInvalidArgument) {
    std::abort();  // garbage must be INVALID_ARGUMENT, nothing else
  }

  tokenwatch::v1::ReportRequest parsed;
  const absl::string_view stored = tokenwatch::collector::FindingBytesIn(bytes);
  if (!stored.empty() && parsed.ParseFromArray(data, static_cast<int>(size))) {
    tokenwatch::v1::Finding finding;
    if (!finding.ParseFromArray(stored.data(), static_cast<int>(stored.size())) ||
        !google::protobuf::util::MessageDifferencer::Equals(finding,
                                                            parsed.finding().finding())) {
      std::abort();  // the store would keep bytes other than the finding that was validated
    }
  }

  tokenwatch::v1::ListFindingsRequest list;
  if (list.ParseFromArray(data, static_cast<int>(size))) {
    (void)tokenwatch::collector::QueryFromRequest(list);
  }
  tokenwatch::v1::WatchFindingsRequest watch;
  if (watch.ParseFromArray(data, static_cast<int>(size))) {
    (void)tokenwatch::collector::QueryFromRequest(watch);
  }
  return 0;
}
