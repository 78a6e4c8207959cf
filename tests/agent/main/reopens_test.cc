#include "agent/main/reopens.h"

#include "gtest/gtest.h"

namespace tokenwatch::agent {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1800000000);

tw_reopen_key Key(uint32_t tgid, uint64_t start_ticks = 777) {
  tw_reopen_key key{};
  key.proc = tw_proc_key{tgid, 0, start_ticks};
  key.file = tw_file_id{(8ull << 20) | 1, 4242};
  key.access = TW_ACCESS_SYSCALL;
  return key;
}

detect::TokenRead Read(absl::Time at, const std::string& exe = "/bin/cat") {
  detect::TokenRead read;
  read.time = at;
  read.lineage.process.exe = exe;
  return read;
}

ReopenLedger Ledger() {
  ReopenLedger::Options options;
  options.window = absl::Minutes(10);
  options.idle_expiry = absl::Minutes(11);
  return ReopenLedger(options);
}

TEST(ReopenLedger, CreditsEachIncrementOfTheTotalToTheWindowsRead) {
  ReopenLedger ledger = Ledger();
  uint64_t inc = 0;
  EXPECT_FALSE(ledger.OnRecord(Key(10), 0, Read(kT0), kT0, &inc).has_value());
  EXPECT_EQ(inc, 0u);
  auto credit = ledger.OnTotal(Key(10), 30, kT0 + absl::Seconds(3), &inc);
  ASSERT_TRUE(credit.has_value());
  EXPECT_EQ(credit->opens, 30u);
  EXPECT_EQ(inc, 30u);
  EXPECT_EQ(credit->time, kT0 + absl::Seconds(3));
  // Unchanged: nothing to credit.
  EXPECT_FALSE(ledger.OnTotal(Key(10), 30, kT0 + absl::Seconds(4), &inc).has_value());
  EXPECT_EQ(inc, 0u);
  credit = ledger.OnTotal(Key(10), 45, kT0 + absl::Seconds(5), &inc);
  ASSERT_TRUE(credit.has_value());
  EXPECT_EQ(credit->opens, 15u);
}

TEST(ReopenLedger, ALateCreditStaysInsideItsWindow) {
  // Folded opens happened inside the window: a credit read after it closed
  // must still fold into that window's finding.
  ReopenLedger ledger = Ledger();
  uint64_t inc = 0;
  ledger.OnRecord(Key(10), 0, Read(kT0), kT0, &inc);
  auto credit = ledger.OnTotal(Key(10), 5, kT0 + absl::Minutes(10) + absl::Seconds(1), &inc);
  ASSERT_TRUE(credit.has_value());
  EXPECT_LT(credit->time, kT0 + absl::Minutes(10));
  EXPECT_GE(credit->time, kT0);
}

TEST(ReopenLedger, ANewWindowsRecordCreditsThePreviousWindowsTail) {
  ReopenLedger ledger = Ledger();
  uint64_t inc = 0;
  ledger.OnRecord(Key(10), 0, Read(kT0, "/old"), kT0, &inc);
  ledger.OnTotal(Key(10), 50, kT0 + absl::Minutes(5), &inc);
  // 7 more folded before the window ended; the next window's record says 57.
  auto tail = ledger.OnRecord(Key(10), 57, Read(kT0 + absl::Minutes(11), "/new"),
                              kT0 + absl::Minutes(11), &inc);
  ASSERT_TRUE(tail.has_value());
  EXPECT_EQ(tail->opens, 7u);
  EXPECT_EQ(tail->lineage.process.exe, "/old");
  EXPECT_EQ(inc, 7u);
  auto credit = ledger.OnTotal(Key(10), 60, kT0 + absl::Minutes(12), &inc);
  ASSERT_TRUE(credit.has_value());
  EXPECT_EQ(credit->opens, 3u);
  EXPECT_EQ(credit->lineage.process.exe, "/new");
}

TEST(ReopenLedger, ATotalReadBeforeItsRecordIsNotCountedTwice) {
  ReopenLedger ledger = Ledger();
  uint64_t inc = 0, sum = 0;
  ledger.OnRecord(Key(10), 0, Read(kT0), kT0, &inc);
  ledger.OnTotal(Key(10), 50, kT0 + absl::Seconds(1), &inc);
  sum += 50;
  // The kernel began the next window at 52 and folded 3 more before the
  // agent consumed that window's record.
  ledger.OnTotal(Key(10), 55, kT0 + absl::Minutes(11), &inc);
  sum += inc;
  ledger.OnRecord(Key(10), 52, Read(kT0 + absl::Minutes(10)), kT0 + absl::Minutes(11), &inc);
  sum += inc;
  ledger.OnTotal(Key(10), 60, kT0 + absl::Minutes(12), &inc);
  sum += inc;
  EXPECT_EQ(sum, 60u);
}

TEST(ReopenLedger, ExpectedReadsAreCountedButNotCredited) {
  ReopenLedger ledger = Ledger();
  uint64_t inc = 0;
  ledger.OnRecord(Key(10), 0, std::nullopt, kT0, &inc);
  EXPECT_FALSE(ledger.OnTotal(Key(10), 9, kT0 + absl::Seconds(1), &inc).has_value());
  EXPECT_EQ(inc, 9u);
}

TEST(ReopenLedger, AnotherProcessUnderTheSamePidIsAnotherEntry) {
  ReopenLedger ledger = Ledger();
  uint64_t inc = 0;
  ledger.OnRecord(Key(10, 100), 0, Read(kT0, "/first"), kT0, &inc);
  ledger.OnRecord(Key(10, 200), 0, Read(kT0, "/second"), kT0, &inc);
  auto credit = ledger.OnTotal(Key(10, 200), 4, kT0 + absl::Seconds(1), &inc);
  ASSERT_TRUE(credit.has_value());
  EXPECT_EQ(credit->lineage.process.exe, "/second");
  EXPECT_EQ(ledger.size(), 2u);
}

TEST(ReopenLedger, AnEvictedKernelEntryThatBeganAgainIsCountedFromZero) {
  ReopenLedger ledger = Ledger();
  uint64_t inc = 0;
  ledger.OnRecord(Key(10), 0, Read(kT0), kT0, &inc);
  ledger.OnTotal(Key(10), 100, kT0 + absl::Seconds(1), &inc);
  auto credit = ledger.OnTotal(Key(10), 3, kT0 + absl::Seconds(2), &inc);
  ASSERT_TRUE(credit.has_value());
  EXPECT_EQ(credit->opens, 3u);
}

TEST(ReopenLedger, ForgetsIdleEntriesAndBoundsItsSize) {
  ReopenLedger::Options options;
  options.idle_expiry = absl::Minutes(1);
  options.max_entries = 3;
  ReopenLedger ledger(options);
  uint64_t inc = 0;
  for (uint32_t pid = 1; pid <= 5; ++pid) {
    ledger.OnRecord(Key(pid), 0, Read(kT0), kT0 + absl::Seconds(pid), &inc);
  }
  ledger.Expire(kT0 + absl::Seconds(10));
  EXPECT_EQ(ledger.size(), 3u);
  // The newest three stay.
  EXPECT_TRUE(ledger.OnTotal(Key(5), 1, kT0 + absl::Seconds(11), &inc).has_value());
  ledger.Expire(kT0 + absl::Minutes(5));
  EXPECT_EQ(ledger.size(), 0u);
}

}  // namespace
}  // namespace tokenwatch::agent
