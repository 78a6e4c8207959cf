#include "collector/validate.h"

#include <cstdint>
#include <string>

#include <google/protobuf/util/message_differencer.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/collector/test_findings.h"

namespace tokenwatch::collector {
namespace {

using ::testing::HasSubstr;
using testing::TestFinding;
using tokenwatch::v1::Finding;

std::string Problem(const Finding& f) {
  absl::Status s = ValidateFinding(f, absl::Now());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  return std::string(s.message());
}

TEST(ValidateFinding, AcceptsAWellFormedFinding) {
  EXPECT_TRUE(ValidateFinding(TestFinding(1), absl::Now()).ok());
}

TEST(ValidateFinding, RejectsBadIdentity) {
  Finding f = TestFinding(1);
  f.set_id("not-a-uuid");
  EXPECT_THAT(Problem(f), HasSubstr("finding.id"));
  f = TestFinding(1);
  f.set_id("1b4e28ba-2fa1-11d2-883f-0016d3cca42g");  // 'g' is not hex
  EXPECT_THAT(Problem(f), HasSubstr("finding.id"));
  f = TestFinding(1);
  f.set_rule_id("TW02");
  EXPECT_THAT(Problem(f), HasSubstr("finding.rule_id"));
  f.set_rule_id("XX002");
  EXPECT_THAT(Problem(f), HasSubstr("finding.rule_id"));
  f = TestFinding(1);
  f.set_node("");
  EXPECT_THAT(Problem(f), HasSubstr("finding.node"));
}

TEST(ValidateFinding, RejectsBadSeverityCountAndTimes) {
  Finding f = TestFinding(1);
  f.set_severity(tokenwatch::v1::SEVERITY_UNSPECIFIED);
  EXPECT_THAT(Problem(f), HasSubstr("finding.severity"));
  f.set_severity(static_cast<tokenwatch::v1::Severity>(99));
  EXPECT_THAT(Problem(f), HasSubstr("finding.severity"));
  f = TestFinding(1);
  f.set_count(0);
  EXPECT_THAT(Problem(f), HasSubstr("finding.count"));
  f = TestFinding(1);
  f.clear_time();
  EXPECT_THAT(Problem(f), HasSubstr("finding.time"));
  // The same bounds and words as for a learned profile's start (common/wire_time.h).
  f = TestFinding(1, absl::Now() + absl::Hours(48));
  EXPECT_THAT(Problem(f), HasSubstr("finding.time: more than 24h in the future"));
  f = TestFinding(1, absl::FromUnixSeconds(0));
  EXPECT_THAT(Problem(f), HasSubstr("finding.time: before the year 2000"));
  f = TestFinding(1);
  f.mutable_token()->mutable_expiry()->set_nanos(1000000000);
  EXPECT_THAT(Problem(f), HasSubstr("finding.token.expiry: nanos out of range"));
  f = TestFinding(1);
  f.mutable_token()->mutable_expiry()->set_seconds(253402300800);  // year 10000
  EXPECT_THAT(Problem(f), HasSubstr("finding.token.expiry: outside years 1..9999"));
  f = TestFinding(1);
  f.mutable_last_seen()->set_seconds(f.time().seconds() - 10);
  EXPECT_THAT(Problem(f), HasSubstr("finding.last_seen"));
}

TEST(ValidateFinding, BoundsStringsAndLists) {
  const std::string huge(kMaxStringBytes + 1, 'a');
  Finding f = TestFinding(1);
  f.set_summary(huge);
  EXPECT_THAT(Problem(f), HasSubstr("finding.summary"));
  f = TestFinding(1);
  f.mutable_process()->set_argv(1, huge);
  EXPECT_THAT(Problem(f), HasSubstr("finding.process.argv[1]"));
  f = TestFinding(1);
  f.mutable_ancestors(1)->mutable_pod()->set_name(huge);
  EXPECT_THAT(Problem(f), HasSubstr("finding.ancestors[1].pod.name"));
  f = TestFinding(1);
  for (int i = 0; i < kMaxArgv; ++i) f.mutable_process()->add_argv("x");
  EXPECT_THAT(Problem(f), HasSubstr("finding.process.argv"));
  f = TestFinding(1);
  for (int i = 0; i < kMaxAncestors; ++i) f.add_ancestors();
  EXPECT_THAT(Problem(f), HasSubstr("finding.ancestors"));
  f = TestFinding(1);
  for (int i = 0; i <= kMaxConnections; ++i) f.add_connections();
  EXPECT_THAT(Problem(f), HasSubstr("finding.connections"));
  f = TestFinding(1);
  for (int i = 0; i <= kMaxListEntries; ++i) f.add_severity_reasons("a reason");
  EXPECT_THAT(Problem(f), HasSubstr("finding.severity_reasons"));
  f = TestFinding(1);
  f.add_severity_reasons(huge);
  EXPECT_THAT(Problem(f), HasSubstr("finding.severity_reasons[0]"));
  f = TestFinding(1);
  f.add_connections()->set_port(70000);
  EXPECT_THAT(Problem(f), HasSubstr("finding.connections[0].port"));
  // Exactly at the bound is fine.
  f = TestFinding(1);
  f.set_summary(std::string(kMaxStringBytes, 'a'));
  EXPECT_TRUE(ValidateFinding(f, absl::Now()).ok());
}

TEST(ValidateFinding, RejectsEnumValuesOutOfRange) {
  Finding kind = TestFinding(1);
  kind.mutable_token()->set_kind(static_cast<tokenwatch::v1::TokenKind>(9));
  EXPECT_THAT(ValidateFinding(kind, absl::Now()).message(), HasSubstr("finding.token.kind"));
  Finding path = TestFinding(1);
  path.mutable_access()->set_path(static_cast<tokenwatch::v1::AccessPath>(-1));
  EXPECT_THAT(ValidateFinding(path, absl::Now()).message(), HasSubstr("finding.access.path"));
  Finding target = TestFinding(1);
  target.add_connections()->set_target(static_cast<tokenwatch::v1::TargetKind>(77));
  EXPECT_THAT(ValidateFinding(target, absl::Now()).message(),
              HasSubstr("finding.connections[0].target"));
}

TEST(ParseReportRequest, RefusesGarbageEmptyMessagesAndZeroSequences) {
  EXPECT_EQ(ParseReportRequest("\xff\xff\xff\xff\x01", absl::Now()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ParseReportRequest("", absl::Now()).status().message(), HasSubstr("neither"));
  tokenwatch::v1::ReportRequest gap;
  gap.mutable_gap()->set_through(0);
  EXPECT_FALSE(ParseReportRequest(gap.SerializeAsString(), absl::Now()).ok());
  tokenwatch::v1::ReportRequest finding;
  finding.mutable_finding()->set_sequence(0);
  *finding.mutable_finding()->mutable_finding() = TestFinding(1);
  EXPECT_THAT(ParseReportRequest(finding.SerializeAsString(), absl::Now()).status().message(),
              HasSubstr("sequence"));
  finding.mutable_finding()->set_sequence(7);
  EXPECT_TRUE(ParseReportRequest(finding.SerializeAsString(), absl::Now()).ok());
  tokenwatch::v1::ReportRequest hello;
  hello.mutable_hello()->set_node(std::string(5000, 'n'));
  hello.mutable_hello()->set_agent_id("a");
  EXPECT_THAT(ParseReportRequest(hello.SerializeAsString(), absl::Now()).status().message(),
              HasSubstr("hello.node"));
}

// A length-delimited field as it is on the wire: tag, length, payload (all short here, so the
// length is one varint byte or two).
std::string Field(uint32_t number, const std::string& payload) {
  std::string out;
  auto varint = [&out](uint64_t v) {
    while (v >= 0x80) {
      out.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out.push_back(static_cast<char>(v));
  };
  varint((uint64_t{number} << 3) | 2);
  varint(payload.size());
  out += payload;
  return out;
}

constexpr uint32_t kRequestFinding = tokenwatch::v1::ReportRequest::kFindingFieldNumber;
constexpr uint32_t kSequencedFinding = tokenwatch::v1::SequencedFinding::kFindingFieldNumber;
constexpr uint32_t kUnknownField = 99;

// SequencedFinding{sequence: 7, finding: f} on the wire.
std::string Sequenced(const Finding& f) {
  tokenwatch::v1::SequencedFinding sequenced;
  sequenced.set_sequence(7);
  *sequenced.mutable_finding() = f;
  return sequenced.SerializeAsString();
}

tokenwatch::v1::ReportRequest Parsed(const std::string& bytes) {
  tokenwatch::v1::ReportRequest request;
  EXPECT_TRUE(request.ParseFromString(bytes));
  return request;
}

TEST(FindingBytesIn, ReturnsTheAgentsBytesForTheExactShape) {
  const Finding f = TestFinding(1);
  tokenwatch::v1::ReportRequest request;
  request.mutable_finding()->set_sequence(7);
  *request.mutable_finding()->mutable_finding() = f;
  const std::string bytes = request.SerializeAsString();
  const absl::string_view found = FindingBytesIn(bytes);
  ASSERT_FALSE(found.empty());
  // A view into the request itself, not a copy.
  EXPECT_GE(found.data(), bytes.data());
  EXPECT_LE(found.data() + found.size(), bytes.data() + bytes.size());
  Finding stored;
  ASSERT_TRUE(stored.ParseFromArray(found.data(), static_cast<int>(found.size())));
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(stored, f));
  EXPECT_EQ(found, f.SerializeAsString());
}

TEST(FindingBytesIn, EmptyWhenTheFindingOccursTwiceInSequencedFinding) {
  Finding first = TestFinding(1);
  Finding second = TestFinding(1);
  second.set_summary("a second summary");
  second.set_count(5);
  const std::string bytes =
      Field(kRequestFinding, Sequenced(first) + Field(kSequencedFinding,
                                                      second.SerializeAsString()));
  // Protobuf merges the two: the finding that was validated is neither copy's bytes.
  const tokenwatch::v1::ReportRequest request = Parsed(bytes);
  EXPECT_EQ(request.finding().finding().summary(), "a second summary");
  EXPECT_FALSE(google::protobuf::util::MessageDifferencer::Equals(request.finding().finding(),
                                                                  second));
  EXPECT_TRUE(FindingBytesIn(bytes).empty());
}

TEST(FindingBytesIn, EmptyWhenATopLevelFieldRepeatsOrTrails) {
  const std::string once = Field(kRequestFinding, Sequenced(TestFinding(1)));
  ASSERT_FALSE(FindingBytesIn(once).empty());
  Finding other = TestFinding(2);
  const std::string twice = once + Field(kRequestFinding, Sequenced(other));
  EXPECT_EQ(Parsed(twice).finding().finding().id(), other.id());
  EXPECT_TRUE(FindingBytesIn(twice).empty());
  const std::string trailing = once + Field(kUnknownField, "extra");
  EXPECT_TRUE(Parsed(trailing).has_finding());
  EXPECT_TRUE(FindingBytesIn(trailing).empty());
  // A Hello or a gap carries no finding at all.
  tokenwatch::v1::ReportRequest hello;
  hello.mutable_hello()->set_node("node-a");
  EXPECT_TRUE(FindingBytesIn(hello.SerializeAsString()).empty());
  EXPECT_TRUE(FindingBytesIn("").empty());
}

TEST(FindingBytesIn, SkipsAnUnknownFieldInsideSequencedFinding) {
  const Finding f = TestFinding(1);
  const std::string bytes =
      Field(kRequestFinding, Field(kUnknownField, "from a newer agent") + Sequenced(f));
  const absl::string_view found = FindingBytesIn(bytes);
  ASSERT_FALSE(found.empty());
  EXPECT_EQ(found, f.SerializeAsString());
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(Parsed(bytes).finding().finding(),
                                                                 f));
}

TEST(FindingBytesIn, EmptyForTruncatedBytes) {
  const std::string bytes = Field(kRequestFinding, Sequenced(TestFinding(1)));
  for (size_t cut : {size_t{1}, size_t{3}, bytes.size() / 2, bytes.size() - 1}) {
    EXPECT_TRUE(FindingBytesIn(absl::string_view(bytes).substr(0, cut)).empty()) << cut;
  }
}

}  // namespace
}  // namespace tokenwatch::collector
