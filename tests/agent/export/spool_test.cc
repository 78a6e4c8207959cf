// The durable spool: framing, replay after reopen, acks, corruption and the size bound.
#include "agent/export/spool.h"

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace tokenwatch::exporting {
namespace {

v1::Finding MakeFinding(int i, size_t summary_bytes = 40) {
  v1::Finding f;
  f.set_id(absl::StrCat("00000000-0000-4000-8000-", std::string(12 - std::to_string(i).size(),
                                                                '0'),
                        i));
  f.set_node("node-1");
  f.set_count(1);
  f.set_rule_id("TW001");
  f.set_summary(std::string(summary_bytes, 'x'));
  return f;
}

std::vector<uint64_t> Sequences(const std::vector<v1::SequencedFinding>& items) {
  std::vector<uint64_t> out;
  for (const auto& item : items) out.push_back(item.sequence());
  return out;
}

std::vector<uint64_t> Range(uint64_t from, uint64_t to) {
  std::vector<uint64_t> out;
  for (uint64_t i = from; i <= to; ++i) out.push_back(i);
  return out;
}

// Reports the spool's unreported losses as the client does (a TW091-like finding appended to the
// spool) and returns what the report said; nothing when nothing was lost.
Spool::Lost Report(Spool& spool) {
  Spool::Lost reported;
  absl::StatusOr<uint64_t> sequence = spool.AppendLossReport([&](const Spool::Lost& lost) {
    reported = lost;
    v1::Finding report = MakeFinding(9999);
    report.set_rule_id("TW091");
    report.set_count(lost.dropped + lost.corrupt);
    return report;
  });
  EXPECT_TRUE(sequence.ok()) << sequence.status();
  return reported;
}

class SpoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tw-spool-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<Spool> Open(uint64_t max_bytes = 1 << 20, uint64_t segment_bytes = 0) {
    Spool::Options o;
    o.dir = dir_ + "/spool";
    o.max_bytes = max_bytes;
    o.segment_bytes = segment_bytes;
    auto spool = Spool::Open(o);
    EXPECT_TRUE(spool.ok()) << spool.status();
    return spool.ok() ? *std::move(spool) : nullptr;
  }

  std::vector<std::string> Segments() {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(dir_ + "/spool")) {
      if (e.path().extension() == ".seg") out.push_back(e.path().string());
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  // Flips a byte inside the payload of the first record of the oldest segment.
  void DamageFirstRecord() {
    std::fstream file(Segments()[0], std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(kSpoolRecordHeaderBytes + 3);
    file.put('\xee');
  }

  std::string dir_;
};

TEST(SpoolRecord, ScanFindsEveryRecordOfAnIntactSegment) {
  std::string bytes = EncodeSpoolRecord("alpha") + EncodeSpoolRecord("") +
                      EncodeSpoolRecord(std::string(1000, 'b'));
  SpoolScan scan = ScanSpoolSegment(bytes);
  ASSERT_EQ(scan.records.size(), 3u);
  EXPECT_EQ(scan.corrupt, 0u);
  EXPECT_EQ(scan.records[0].payload, "alpha");
  EXPECT_EQ(scan.records[1].payload, "");
  EXPECT_EQ(scan.records[2].payload.size(), 1000u);
}

TEST(SpoolRecord, AnyFlippedByteCostsExactlyThatRecord) {
  const std::string a = EncodeSpoolRecord("first record");
  const std::string b = EncodeSpoolRecord("second record, the one we damage");
  const std::string c = EncodeSpoolRecord("third record");
  for (size_t i = 0; i < b.size(); ++i) {
    std::string bytes = a + b + c;
    bytes[a.size() + i] ^= 0x5a;
    SpoolScan scan = ScanSpoolSegment(bytes);
    ASSERT_EQ(scan.records.size(), 2u) << "byte " << i;
    EXPECT_EQ(scan.records[0].payload, "first record");
    EXPECT_EQ(scan.records[1].payload, "third record") << "byte " << i;
    EXPECT_EQ(scan.corrupt, 1u) << "byte " << i;
  }
}

TEST(SpoolRecord, TornTailIsCountedAndGarbageNeverCrashes) {
  const std::string a = EncodeSpoolRecord("whole");
  const std::string b = EncodeSpoolRecord("torn by a crash");
  SpoolScan scan = ScanSpoolSegment(a + b.substr(0, b.size() - 3));
  ASSERT_EQ(scan.records.size(), 1u);
  EXPECT_EQ(scan.corrupt, 1u);

  std::mt19937 rng(7);
  for (int round = 0; round < 200; ++round) {
    std::string junk(rng() % 300, '\0');
    for (char& ch : junk) ch = static_cast<char>(rng());
    if (round % 2 == 0) junk.insert(rng() % (junk.size() + 1), "TWR2");
    SpoolScan s = ScanSpoolSegment(junk);
    for (const auto& r : s.records) {
      EXPECT_LE(r.offset + r.size, junk.size());
    }
  }
}

TEST_F(SpoolTest, AppendedFindingsReadBackInOrderAndAcksDeleteSegments) {
  auto spool = Open(1 << 20, 4096);
  for (int i = 1; i <= 100; ++i) ASSERT_EQ(*spool->Append(MakeFinding(i)), uint64_t(i));
  ASSERT_TRUE(spool->Sync().ok());
  EXPECT_GT(Segments().size(), 1u);
  EXPECT_EQ(Sequences(spool->ReadAfter(0, 1000)), Range(1, 100));
  EXPECT_EQ(Sequences(spool->ReadAfter(40, 5)), Range(41, 45));
  EXPECT_EQ(spool->ReadAfter(0, 1)[0].finding().id(), MakeFinding(1).id());

  EXPECT_EQ(spool->Ack(60), 60u);
  EXPECT_EQ(spool->stats().unacked, 40u);
  EXPECT_EQ(spool->Ack(100), 40u);
  EXPECT_EQ(spool->stats().unacked, 0u);
  EXPECT_TRUE(Segments().empty()) << "fully acked segments are deleted";
}

TEST_F(SpoolTest, ReopenReplaysOnlyTheUnackedAndKeepsNumbering) {
  {
    auto spool = Open(1 << 20, 4096);
    for (int i = 1; i <= 50; ++i) ASSERT_TRUE(spool->Append(MakeFinding(i)).ok());
    spool->Ack(20);
    ASSERT_TRUE(spool->Sync().ok());
  }
  auto spool = Open(1 << 20, 4096);
  EXPECT_EQ(Sequences(spool->ReadAfter(0, 1000)), Range(21, 50));
  EXPECT_EQ(spool->stats().acked, 20u);
  EXPECT_EQ(*spool->Append(MakeFinding(51)), 51u) << "sequence numbers continue";
  spool->Ack(51);
  spool.reset();
  spool = Open(1 << 20, 4096);
  EXPECT_TRUE(spool->ReadAfter(0, 1000).empty());
  EXPECT_EQ(*spool->Append(MakeFinding(52)), 52u) << "numbering survives an empty spool";
}

TEST_F(SpoolTest, OneCorruptByteSkipsOneRecordAndTheRestIsDelivered) {
  {
    auto spool = Open(1 << 20, 1 << 16);
    for (int i = 1; i <= 20; ++i) ASSERT_TRUE(spool->Append(MakeFinding(i)).ok());
    ASSERT_TRUE(spool->Sync().ok());
  }
  std::vector<std::string> segments = Segments();
  ASSERT_EQ(segments.size(), 1u);
  std::fstream file(segments[0], std::ios::in | std::ios::out | std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  const size_t record_size = bytes.size() / 20;
  // A byte in the middle of record 10's payload.
  const size_t offset = 9 * record_size + record_size / 2;
  file.seekp(static_cast<std::streamoff>(offset));
  file.put(static_cast<char>(bytes[offset] ^ 0x01));
  file.close();

  auto spool = Open(1 << 20, 1 << 16);
  std::vector<uint64_t> expected = Range(1, 20);
  expected.erase(expected.begin() + 9);
  EXPECT_EQ(Sequences(spool->ReadAfter(0, 1000)), expected);
  EXPECT_EQ(spool->stats().corrupt_total, 1u);
  EXPECT_EQ(spool->stats().unreported.corrupt, 1u);
  Spool::Lost lost = Report(*spool);
  EXPECT_EQ(lost.corrupt, 1u);
  EXPECT_EQ(lost.dropped, 0u);
  EXPECT_EQ(Report(*spool).corrupt, 0u) << "a loss is reported once";
  EXPECT_EQ(spool->stats().unreported.corrupt, 0u);
}

TEST_F(SpoolTest, DamageAfterOpenIsSkippedWhenRead) {
  auto spool = Open(1 << 20, 1 << 16);
  for (int i = 1; i <= 5; ++i) ASSERT_TRUE(spool->Append(MakeFinding(i)).ok());
  ASSERT_TRUE(spool->Sync().ok());
  DamageFirstRecord();
  EXPECT_EQ(Sequences(spool->ReadAfter(0, 100)), Range(2, 5));
  EXPECT_EQ(Report(*spool).corrupt, 1u);
}

TEST_F(SpoolTest, AFullSpoolDropsTheOldestAndCountsThem) {
  auto spool = Open(16384, 4096);
  for (int i = 1; i <= 400; ++i) ASSERT_TRUE(spool->Append(MakeFinding(i, 100)).ok());
  Spool::Stats stats = spool->stats();
  EXPECT_LE(stats.bytes, 16384u);
  EXPECT_GT(stats.dropped_total, 0u);
  EXPECT_EQ(stats.dropped_total + stats.unacked, 400u) << "every finding is stored or counted";
  std::vector<uint64_t> left = Sequences(spool->ReadAfter(0, 1000));
  ASSERT_FALSE(left.empty());
  EXPECT_EQ(left.back(), 400u) << "the newest survive";
  EXPECT_EQ(left, Range(401 - left.size(), 400)) << "only the oldest are dropped";
  EXPECT_EQ(spool->stats().unreported.dropped, stats.dropped_total);
  EXPECT_EQ(Report(*spool).dropped, stats.dropped_total);
}

TEST_F(SpoolTest, AckedFindingsAreNotCountedWhenTheirSegmentGoes) {
  auto spool = Open(16384, 4096);
  for (int i = 1; i <= 400; ++i) {
    ASSERT_TRUE(spool->Append(MakeFinding(i, 100)).ok());
    spool->Ack(static_cast<uint64_t>(i));
  }
  EXPECT_EQ(spool->stats().dropped_total, 0u);
}

// Runs `body` in a child process that then dies by SIGKILL: no destructor, no flush, no sync
// beyond what the spool did itself, as when the agent is killed.
template <typename Body>
void InAChildKilledAfterwards(Body body) {
  fflush(nullptr);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    body();
    kill(getpid(), SIGKILL);
    _exit(1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child did not get that far";
}

TEST_F(SpoolTest, DropsOfAFullSpoolAreStillCountedAfterASigkill) {
  InAChildKilledAfterwards([&] {
    auto spool = Open(16384, 4096);
    for (int i = 1; i <= 400; ++i) {
      if (!spool->Append(MakeFinding(i, 100)).ok()) _exit(2);
    }
    if (spool->stats().dropped_total == 0) _exit(3);
  });
  auto spool = Open(16384, 4096);
  const Spool::Stats stats = spool->stats();
  EXPECT_GT(stats.unreported.dropped, 0u);
  EXPECT_EQ(stats.unreported.dropped + stats.unacked, 400u) << "every finding is stored or counted";
  spool->Ack(stats.last_sequence);  // room for the report, which then drops nothing more
  EXPECT_EQ(Report(*spool).dropped, stats.unreported.dropped);
  spool.reset();
  EXPECT_EQ(Open(16384, 4096)->stats().unreported.dropped, 0u) << "reported counts stay reported";
}

TEST_F(SpoolTest, ALossReportIsDurableAndClearsTheCountInOneStep) {
  uint64_t dropped = 0;
  {
    auto spool = Open(16384, 4096);
    for (int i = 1; i <= 400; ++i) ASSERT_TRUE(spool->Append(MakeFinding(i, 100)).ok());
    dropped = spool->stats().dropped_total;
    ASSERT_GT(dropped, 0u);
  }
  InAChildKilledAfterwards([&] {
    auto spool = Open(16384, 4096);
    spool->CountDropped(7);  // the caller's own losses, as from the client's memory queue
    absl::StatusOr<uint64_t> sequence = spool->AppendLossReport([](const Spool::Lost& lost) {
      v1::Finding report = MakeFinding(9999);
      report.set_rule_id("TW091");
      report.set_count(lost.dropped + lost.corrupt);
      return report;
    });
    if (!sequence.ok() || *sequence != 401) _exit(2);
  });
  auto spool = Open(16384, 4096);
  EXPECT_EQ(spool->stats().unreported.dropped, 0u) << "the reported loss is not counted again";
  std::vector<v1::SequencedFinding> left = spool->ReadAfter(0, 1000);
  ASSERT_FALSE(left.empty());
  EXPECT_EQ(left.back().sequence(), 401u);
  EXPECT_EQ(left.back().finding().rule_id(), "TW091");
  EXPECT_EQ(left.back().finding().count(), dropped + 7) << "spool drops plus the caller's";
  EXPECT_EQ(*spool->AppendLossReport([](const Spool::Lost&) { return MakeFinding(1); }), 0u)
      << "nothing lost, nothing reported";
}

TEST_F(SpoolTest, ADamagedRecordIsCountedOnceAcrossRestarts) {
  {
    auto spool = Open(1 << 20, 1 << 16);
    for (int i = 1; i <= 5; ++i) ASSERT_TRUE(spool->Append(MakeFinding(i)).ok());
  }
  DamageFirstRecord();
  // Killed before the loss was reported: the restart still knows it, and only once.
  InAChildKilledAfterwards([&] {
    if (Open(1 << 20, 1 << 16)->stats().corrupt_total != 1) _exit(2);
  });
  Open(1 << 20, 1 << 16);  // a clean restart that does not report either
  {
    auto spool = Open(1 << 20, 1 << 16);
    EXPECT_EQ(Sequences(spool->ReadAfter(0, 100)), Range(2, 5));
    EXPECT_EQ(Report(*spool).corrupt, 1u);
  }
  EXPECT_EQ(Open(1 << 20, 1 << 16)->stats().unreported.corrupt, 0u)
      << "a reported damaged record is not reported again while its segment lives";
}

TEST_F(SpoolTest, DamageFoundWhileReadingSurvivesASigkill) {
  // Killed before the next Sync the rescan finds the damage; after it, the `lost` file has it.
  for (bool synced : {false, true}) {
    SCOPED_TRACE(synced ? "synced after the read" : "killed right after the read");
    std::filesystem::remove_all(dir_ + "/spool");
    InAChildKilledAfterwards([&] {
      auto spool = Open(1 << 20, 1 << 16);
      for (int i = 1; i <= 5; ++i) {
        if (!spool->Append(MakeFinding(i)).ok()) _exit(2);
      }
      DamageFirstRecord();
      if (spool->ReadAfter(0, 100).size() != 4) _exit(3);
      if (synced && !spool->Sync().ok()) _exit(4);
    });
    auto spool = Open(1 << 20, 1 << 16);
    EXPECT_EQ(spool->stats().unreported.corrupt, 1u)
        << "counted by the read or by the rescan, never by both";
    EXPECT_EQ(Report(*spool).corrupt, 1u);
  }
}

TEST_F(SpoolTest, TheCallersDropsAreReportedAfterASigkill) {
  InAChildKilledAfterwards([&] {
    auto spool = Open(1 << 20, 1 << 16);
    for (int i = 1; i <= 3; ++i) {
      if (!spool->Append(MakeFinding(i)).ok()) _exit(2);
    }
    spool->CountDropped(5);
    spool->CountDropped(2);
    if (!spool->Sync().ok()) _exit(3);  // the batch fsync the client does anyway
  });
  auto spool = Open(1 << 20, 1 << 16);
  EXPECT_EQ(spool->stats().dropped_total, 0u) << "not drops of the spool's own";
  EXPECT_EQ(Report(*spool).dropped, 7u);
  EXPECT_EQ(Sequences(spool->ReadAfter(0, 100)), Range(1, 4)) << "the findings and the report";
  spool.reset();
  EXPECT_EQ(Open(1 << 20, 1 << 16)->stats().unreported.dropped, 0u) << "reported once";
}

TEST_F(SpoolTest, ADamagedLostFileDoesNotHideDamageInASegment) {
  {
    auto spool = Open(1 << 20, 1 << 16);
    for (int i = 1; i <= 5; ++i) ASSERT_TRUE(spool->Append(MakeFinding(i)).ok());
  }
  DamageFirstRecord();
  {
    std::ofstream lost(dir_ + "/spool/lost", std::ios::trunc | std::ios::binary);
    lost << "dropped 1x\n\xff\xfe\x01 not a count\ncounted\ncorrupt -3\n";
  }
  {
    auto spool = Open(1 << 20, 1 << 16);
    ASSERT_NE(spool, nullptr);
    EXPECT_TRUE(spool->stats().lost_file_damaged);
    EXPECT_EQ(Sequences(spool->ReadAfter(0, 100)), Range(2, 5));
    EXPECT_EQ(Report(*spool).corrupt, 1u) << "the segment's damage is counted afresh";
  }
  auto spool = Open(1 << 20, 1 << 16);
  EXPECT_FALSE(spool->stats().lost_file_damaged) << "a clean file replaced the damaged one";
  EXPECT_EQ(spool->stats().unreported.corrupt, 0u) << "and remembers the damage was counted";
}

// The spool cannot write its loss counts (a directory where it writes them aside): it keeps
// what it would drop while it can, and once a write succeeds the counts are durable.
TEST_F(SpoolTest, AFullSpoolThatCannotRecordItsLossesOvershootsBrieflyAndCountsThemLater) {
  const std::string blocker = dir_ + "/spool/lost.tmp";
  InAChildKilledAfterwards([&] {
    auto spool = Open(16384, 4096);
    if (!std::filesystem::create_directory(blocker)) _exit(2);
    uint64_t most = 0;
    for (int i = 1; i <= 400; ++i) {
      if (!spool->Append(MakeFinding(i, 100)).ok()) _exit(3);
      most = std::max(most, spool->stats().bytes);
    }
    const Spool::Stats stats = spool->stats();
    if (stats.lost_write_failures == 0) _exit(4);
    if (most <= 16384) _exit(5);         // kept what it could not record the loss of
    if (most > 16384 + 4096) _exit(6);   // but by one segment at most
    if (stats.dropped_total == 0) _exit(7);
    if (stats.dropped_total + stats.unacked != 400) _exit(8);
    std::filesystem::remove(blocker);
    if (!spool->Sync().ok()) _exit(9);
  });
  auto spool = Open(16384, 4096);
  const Spool::Stats stats = spool->stats();
  EXPECT_GT(stats.unreported.dropped, 0u);
  EXPECT_EQ(stats.unreported.dropped + stats.unacked, 400u) << "every finding is stored or counted";
}

TEST_F(SpoolTest, AnAckedSegmentStaysUntilItsDamageCountIsOnDisk) {
  const std::string blocker = dir_ + "/spool/lost.tmp";
  InAChildKilledAfterwards([&] {
    auto spool = Open(1 << 20, 1 << 16);
    for (int i = 1; i <= 5; ++i) {
      if (!spool->Append(MakeFinding(i)).ok()) _exit(2);
    }
    DamageFirstRecord();
    if (spool->ReadAfter(0, 100).size() != 4) _exit(3);
    if (!std::filesystem::create_directory(blocker)) _exit(4);
    spool->Ack(5);
    if (Segments().size() != 1) _exit(5);  // unlinking it would forget the damage
    if (spool->stats().lost_write_failures == 0) _exit(6);
    std::filesystem::remove(blocker);
    if (!spool->Sync().ok()) _exit(7);
    if (!Segments().empty()) _exit(8);  // written now, so the acked segment goes
  });
  auto spool = Open(1 << 20, 1 << 16);
  EXPECT_EQ(spool->stats().unreported.corrupt, 1u) << "the damage outlived its segment";
}

TEST_F(SpoolTest, RefusesAnUnusableDirectory) {
  Spool::Options o;
  o.dir = "/proc/tw-no-such/spool";
  EXPECT_FALSE(Spool::Open(o).ok());
}

}  // namespace
}  // namespace tokenwatch::exporting
