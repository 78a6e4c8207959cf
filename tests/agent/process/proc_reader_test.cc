#include "agent/process/proc_reader.h"

#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace tokenwatch::process {
namespace {

// A JWT-shaped string built at run time (never a real token).
std::string FakeJwt() {
  return absl::StrCat("eyJhbGciOiJSUzI1NiJ9", ".", "eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ",
                      ".", std::string(64, 'Q'));
}

TEST(SplitArgv, SplitsAtNulsAndRedactsJwts) {
  std::string block = absl::StrCat("curl", std::string(1, '\0'), "-H", std::string(1, '\0'),
                                   "Authorization: Bearer ", FakeJwt(), std::string(1, '\0'));
  std::vector<std::string> argv = SplitArgv(block);
  ASSERT_EQ(argv.size(), 3u);
  EXPECT_EQ(argv[0], "curl");
  EXPECT_EQ(argv[2], "Authorization: Bearer <redacted-jwt>");
}

TEST(SplitArgv, RedactsAJwtCutByTheKernelsArgvLimit) {
  std::string jwt = FakeJwt();
  std::string block = absl::StrCat("kubectl", std::string(1, '\0'), "--token=",
                                   jwt.substr(0, 30));
  std::vector<std::string> argv = SplitArgv(block, /*cut=*/true);
  ASSERT_EQ(argv.size(), 2u);
  EXPECT_EQ(argv[1], "--token=<redacted-jwt>");
  // A cut JWT that starts its own argument.
  block = absl::StrCat("x", std::string(1, '\0'), jwt.substr(0, 12));
  argv = SplitArgv(block, true);
  ASSERT_EQ(argv.size(), 2u);
  EXPECT_EQ(argv[1], "<redacted-jwt>");
}

TEST(SplitArgv, BoundsArgumentCountAndLength) {
  std::string block;
  for (int i = 0; i < 100; ++i) absl::StrAppend(&block, std::string(2000, 'a'), std::string(1, '\0'));
  std::vector<std::string> argv = SplitArgv(block);
  EXPECT_EQ(argv.size(), 65u);
  EXPECT_LE(argv[0].size(), 1024u + 5u);
}

TEST(ProcReader, ReadsItsOwnProcess) {
  ProcReader proc;
  auto stat = proc.ReadStat(static_cast<uint32_t>(getpid()));
  ASSERT_TRUE(stat.ok());
  EXPECT_EQ(stat->ppid, static_cast<uint32_t>(getppid()));
  EXPECT_GT(stat->start_boottime_ns, 0u);
  auto exe = proc.ReadExe(static_cast<uint32_t>(getpid()));
  ASSERT_TRUE(exe.ok());
  EXPECT_NE(exe->find("agent_process_proc_reader_test"), std::string::npos);
  auto ids = proc.ReadIds(static_cast<uint32_t>(getpid()));
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->first, getuid());
}

TEST(ProcReader, GoneProcessIsNotFound) {
  ProcReader proc;
  // Pid numbers beyond pid_max never exist.
  EXPECT_EQ(proc.ReadStat(0x7fffffff).status().code(), absl::StatusCode::kNotFound);
}

TEST(BootClock, MapsNowToNow) {
  BootClock clock;
  absl::Duration skew = clock.ToTime(clock.NowBoottimeNs()) - absl::Now();
  EXPECT_LT(absl::AbsDuration(skew), absl::Milliseconds(50));
}

}  // namespace
}  // namespace tokenwatch::process
