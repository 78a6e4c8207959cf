#include "collector/ctl/format.h"

#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/collector/test_findings.h"

namespace tokenwatch::collector::ctl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::TestFinding;

TEST(ParseSince, AcceptsDurationsAndRfc3339) {
  absl::Time now = absl::FromUnixSeconds(1700000000);
  EXPECT_EQ(*ParseSince("10m", now), now - absl::Minutes(10));
  EXPECT_EQ(*ParseSince("1h30m", now), now - absl::Minutes(90));
  EXPECT_EQ(*ParseSince("3d", now), now - absl::Hours(72));
  EXPECT_EQ(*ParseSince("2023-11-14T22:13:20Z", now), absl::FromUnixSeconds(1700000000));
  EXPECT_FALSE(ParseSince("yesterday", now).ok());
  EXPECT_FALSE(ParseSince("-5m", now).ok());
  EXPECT_FALSE(ParseSince("", now).ok());
}

TEST(ParseSeverity, AcceptsNamesInAnyCase) {
  EXPECT_EQ(*ParseSeverity("medium"), tokenwatch::v1::SEVERITY_MEDIUM);
  EXPECT_EQ(*ParseSeverity("CRITICAL"), tokenwatch::v1::SEVERITY_CRITICAL);
  EXPECT_EQ(*ParseSeverity("severity_high"), tokenwatch::v1::SEVERITY_HIGH);
  EXPECT_FALSE(ParseSeverity("unspecified").ok());
  EXPECT_FALSE(ParseSeverity("urgent").ok());
}

TEST(Printable, NeutralisesTerminalControlSequences) {
  EXPECT_EQ(Printable("ok \xc3\xa9"), "ok \xc3\xa9");  // é stays
  EXPECT_EQ(Printable("a\x1b[2Jb\nc"), "a?[2Jb?c");
  EXPECT_EQ(Printable("x\xc2\x9b" "31m"), "x?31m");  // C1 CSI
}

TEST(FormatTable, AlignsColumnsUnderTheHeader) {
  tokenwatch::v1::Finding a = TestFinding(1);
  tokenwatch::v1::Finding b = TestFinding(2);
  b.set_node("a-much-longer-node-name");
  b.mutable_process()->set_exe("/usr/local/bin/" + std::string(100, 'z'));
  b.set_summary(std::string(300, 's'));
  std::string table = FormatTable({a, b});
  std::vector<std::string> lines = absl::StrSplit(table, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].rfind("TIME", 0), 0u);
  for (const char* column : {"NODE", "RULE", "SEVERITY", "NAMESPACE/POD", "PROCESS", "COUNT"}) {
    // Every row has its cell starting exactly where the header's column starts.
    size_t at = lines[0].find(column);
    ASSERT_NE(at, std::string::npos) << column;
    EXPECT_EQ(lines[1][at - 1], ' ') << column;
    EXPECT_NE(lines[1][at], ' ') << column;
    EXPECT_NE(lines[2][at], ' ') << column;
  }
  EXPECT_THAT(lines[1], HasSubstr("payments/api-0"));
  EXPECT_THAT(lines[1], HasSubstr("critical"));
  EXPECT_THAT(lines[1], HasSubstr("/bin/cat"));
  EXPECT_THAT(lines[2], HasSubstr("...zzz"));  // long paths keep their end
  EXPECT_LT(lines[2].size(), 300u);            // long summaries are cut
}

TEST(FormatFinding, ShowsLineageRootFirstDownToTheActor) {
  std::string out = FormatFinding(TestFinding(1));
  size_t shim = out.find("containerd-shim-runc-v2");
  size_t sh = out.find("/bin/sh");
  size_t cat = out.find("/bin/cat");
  ASSERT_NE(shim, std::string::npos);
  ASSERT_NE(sh, std::string::npos);
  ASSERT_NE(cat, std::string::npos);
  EXPECT_LT(shim, sh);
  EXPECT_LT(sh, cat);
  EXPECT_THAT(out, HasSubstr("<== actor"));
  // Deeper generations are indented further.
  std::vector<std::string> lines = absl::StrSplit(out, '\n');
  auto indent_of = [&](const std::string& needle) {
    for (const std::string& l : lines) {
      if (l.find(needle) != std::string::npos) return l.find_first_not_of(" `-");
    }
    return std::string::npos;
  };
  EXPECT_LT(indent_of("containerd-shim"), indent_of("/bin/sh"));
  EXPECT_LT(indent_of("/bin/sh"), indent_of("/bin/cat"));
  EXPECT_THAT(out, HasSubstr("Service account:"));
  EXPECT_THAT(out, HasSubstr("api"));
  EXPECT_THAT(out, HasSubstr("openat"));
  EXPECT_THAT(out, HasSubstr("[pod attacker/shell-0]"));
}

TEST(FormatFinding, ListsTheSeverityReasonsOneALineUnderTheSeverity) {
  tokenwatch::v1::Finding f = TestFinding(1);
  f.add_severity_reasons("reader is a shell, interpreter or transfer tool");
  f.add_severity_reasons("reader came through an exec session\x1b[2J");
  std::string out = FormatFinding(f);
  std::vector<std::string> lines = absl::StrSplit(out, '\n');
  size_t at = 0;
  while (at < lines.size() && lines[at].find("Severity:") == std::string::npos) ++at;
  ASSERT_LT(at + 2, lines.size()) << out;
  EXPECT_EQ(lines[at + 1], "  Because:         reader is a shell, interpreter or transfer tool");
  // The second reason starts where the first does, made printable.
  EXPECT_EQ(lines[at + 2], "                   reader came through an exec session?[2J");
  EXPECT_THAT(FormatFinding(TestFinding(1)), Not(HasSubstr("Because:")));
}

TEST(FormatFinding, MarksTruncatedAncestryAndShowsConnections) {
  tokenwatch::v1::Finding f = TestFinding(1);
  f.set_ancestors_truncated(true);
  auto* c = f.add_connections();
  c->set_address("10.96.0.1");
  c->set_port(443);
  c->set_target(tokenwatch::v1::TARGET_KIND_APISERVER);
  std::string out = FormatFinding(f);
  EXPECT_THAT(out, HasSubstr("older ancestors not captured"));
  EXPECT_THAT(out, HasSubstr("10.96.0.1:443  apiserver"));
  EXPECT_THAT(FormatFinding(TestFinding(1)), Not(HasSubstr("not captured")));
}

}  // namespace
}  // namespace tokenwatch::collector::ctl
