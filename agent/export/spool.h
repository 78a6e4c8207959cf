#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "tokenwatch/v1/collector.pb.h"

namespace tokenwatch::exporting {

// On-disk record framing of a spool segment. Every record is
//   magic (4 bytes, "TWR2") | payload length (4, little-endian) | CRC-32 (4, little-endian,
//   zlib's crc32_z over the length bytes and the payload) | payload (a serialized
//   SequencedFinding).
// Format 2 took its checksum from zlib instead of a CRC-32C of our own (format 1, "TWR1", which
// no release wrote); a reader of format 2 sees a format-1 record as damaged.
// The magic lets a reader find the next record after a damaged one whose length it can no longer
// trust, so one bad byte costs one record, not the rest of the segment.
inline constexpr char kSpoolRecordMagic[4] = {'T', 'W', 'R', '2'};
inline constexpr size_t kSpoolRecordHeaderBytes = 12;
// A finding is bounded by the collector's validation to well under this.
inline constexpr uint32_t kMaxSpoolPayloadBytes = 4 * 1024 * 1024;

// The checksum of one record: zlib's CRC-32 of its length bytes, then its payload.
uint32_t SpoolRecordChecksum(absl::string_view length_bytes, absl::string_view payload);

// One framed record holding `payload`.
std::string EncodeSpoolRecord(absl::string_view payload);

// What ScanSpoolSegment found in a segment's bytes.
struct SpoolScan {
  struct Record {
    size_t offset = 0;        // where the record (its magic) starts
    size_t size = 0;          // header + payload
    absl::string_view payload;  // points into the scanned bytes
  };
  std::vector<Record> records;
  // Damaged stretches skipped: a bad checksum, a length past the end, bytes that are no record.
  // A torn record at the very end (a crash mid-write) counts as one too.
  uint64_t corrupt = 0;
};

// Parses a segment: every record whose checksum holds, in file order. After a damaged record the
// reader resumes at the next magic that starts a valid record. Never fails; never reads outside
// `bytes`. This is the parser the spool fuzz target drives.
SpoolScan ScanSpoolSegment(absl::string_view bytes);

// Spool is the agent's durable delivery queue under --state-dir: append-only segment files of
// framed findings with sequence numbers, replayed in order after a reconnect or a restart until
// the collector acks them. Segments whose findings are all acked are deleted. The total size is
// bounded: to make room, the oldest segment is dropped even if unacked, and its unacked findings
// are counted as lost, as are records found corrupt. Appends reach the file at once (write) and
// the disk at Sync() (fsync), which the caller batches.
//
// Losses not yet reported survive a crash: they are kept in the file `lost` beside the segments,
// fsync'd before the segment they concern is unlinked (or, for losses no file shows, such as the
// caller's CountDropped, at the next Sync), and cleared only once the report of them
// (AppendLossReport) is itself durable in the spool. A crash between the two reports the same
// loss twice, never not at all. The file also remembers how many damaged records each surviving
// segment has already been counted for, so that rescanning it after a restart does not count
// them again. When `lost` cannot be written, a segment whose loss is not yet on disk is kept
// rather than unlinked: the spool then overshoots max_bytes by up to one segment, after which
// (or at once when the disk is full, since unlinking is what frees it) the oldest goes anyway
// and its loss is counted in memory until a write succeeds. Each failed write is counted in
// stats().lost_write_failures and logged once per streak.
//
// Threading: all methods are safe from any thread; one mutex guards the index and the files.
class Spool {
 public:
  struct Options {
    std::string dir;
    uint64_t max_bytes = 256ull * 1024 * 1024;
    // Size at which a new segment is started; 0 picks max_bytes / 16 within [4 KiB, 16 MiB].
    uint64_t segment_bytes = 0;
  };

  // Findings that will never be delivered, not yet reported (see AppendLossReport).
  struct Lost {
    uint64_t dropped = 0;  // the spool was full, or the caller lost them (CountDropped)
    uint64_t corrupt = 0;  // a damaged or unreadable record
  };

  struct Stats {
    uint64_t bytes = 0;          // size of all segment files
    uint64_t segments = 0;
    uint64_t unacked = 0;        // findings stored and not yet acked
    uint64_t last_sequence = 0;  // the newest sequence number handed out
    uint64_t acked = 0;          // the collector's ack watermark
    uint64_t dropped_total = 0;  // dropped by the spool to make room (not CountDropped's)
    uint64_t corrupt_total = 0;
    Lost unreported;             // what the next AppendLossReport reports
    // Failed writes of the `lost` file (its counts then live in memory until one succeeds).
    uint64_t lost_write_failures = 0;
    // Open found the `lost` file damaged: whatever it held that did not parse is gone.
    bool lost_file_damaged = false;
  };

  // Opens the spool in `options.dir` (created if missing), indexes the segments left by an
  // earlier run and skips (counting) damaged records. Fails if the directory is unusable.
  static absl::StatusOr<std::unique_ptr<Spool>> Open(Options options);
  ~Spool();
  Spool(const Spool&) = delete;
  Spool& operator=(const Spool&) = delete;

  // Assigns the next sequence number to `finding` and appends it; returns the sequence number.
  absl::StatusOr<uint64_t> Append(const tokenwatch::v1::Finding& finding)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Makes everything appended so far durable, and with it the loss counts gathered since the
  // last write of `lost`. The status is the findings' durability; a failed write of `lost` is
  // counted and logged and retried at the next Sync.
  absl::Status Sync() ABSL_LOCKS_EXCLUDED(mu_);

  // Counts `n` findings the caller lost before they reached the spool (its memory queue
  // overflowed, an append failed) as dropped, to be reported with the spool's own losses.
  // Cheap: made durable by the next Sync, not here.
  void CountDropped(uint64_t n) ABSL_LOCKS_EXCLUDED(mu_);

  // Up to `max` stored findings with a sequence number above `after`, in order. Records found
  // damaged on the way are skipped and counted as lost (on disk at the next Sync; until then a
  // restart finds the damage again by rescanning the segment).
  std::vector<tokenwatch::v1::SequencedFinding> ReadAfter(uint64_t after, size_t max)
      ABSL_LOCKS_EXCLUDED(mu_);

  // The collector stored everything up to `sequence`: deletes fully acked segments and persists
  // the watermark. Returns how many stored findings this ack newly covered.
  uint64_t Ack(uint64_t sequence) ABSL_LOCKS_EXCLUDED(mu_);

  // Reports the losses not yet reported: appends the finding `report` makes of them, makes it
  // durable, then clears them durably. Returns the report's sequence number, or 0 when nothing
  // was lost (`report` is then not called). On an error the losses stay counted for the next
  // attempt.
  absl::StatusOr<uint64_t> AppendLossReport(
      absl::FunctionRef<tokenwatch::v1::Finding(const Lost&)> report) ABSL_LOCKS_EXCLUDED(mu_);

  Stats stats() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    uint64_t sequence;
    uint64_t offset;
    uint32_t size;
  };
  struct Segment {
    std::string name;  // the file name, "<first sequence>.seg"
    std::string path;
    int fd = -1;
    uint64_t bytes = 0;
    std::deque<Entry> entries;
  };

  explicit Spool(Options options) : options_(std::move(options)) {}
  absl::Status Load() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LoadLostLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes lost_ and counted_corrupt_ to the `lost` file (atomically, fsync'd). Fails with
  // ResourceExhausted when the disk is full, Unavailable otherwise; a failure is counted, logged
  // once per streak, and leaves lost_dirty_ set for the next Sync.
  absl::Status PersistLostLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a segment may be unlinked now: its losses are on disk (written first if they were
  // not), or keeping it is not an option (`may_keep` false, or the disk is full).
  bool LossDurableLocked(bool may_keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint64_t> AppendLocked(const tokenwatch::v1::Finding& finding)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SyncLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // fdatasyncs the active segment and the directory: the findings part of SyncLocked.
  absl::Status SyncSegmentsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status StartSegmentLocked(uint64_t first_sequence) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unlinks the oldest segment, counting its unacked findings as dropped when `count_unacked`.
  // Returns false, the segment kept and nothing counted, when its loss could not be made durable
  // first and `may_keep` (see LossDurableLocked).
  bool DropFrontLocked(bool count_unacked, bool may_keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the leading segments with nothing unacked.
  void DropAckedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t UnackedIn(const Segment& segment) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PersistAckedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  std::deque<Segment> segments_ ABSL_GUARDED_BY(mu_);
  // True when the back segment takes appends; segments left by an earlier run never do, so a
  // torn tail is never followed by new records.
  bool back_active_ ABSL_GUARDED_BY(mu_) = false;
  bool back_dirty_ ABSL_GUARDED_BY(mu_) = false;
  bool dir_dirty_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t total_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t last_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t acked_ ABSL_GUARDED_BY(mu_) = 0;
  int acked_fd_ ABSL_GUARDED_BY(mu_) = -1;
  Lost lost_ ABSL_GUARDED_BY(mu_);
  // lost_ or counted_corrupt_ holds counts the `lost` file does not. (Entries of segments already
  // unlinked may linger in the file: harmless, Load forgets names not on disk.)
  bool lost_dirty_ ABSL_GUARDED_BY(mu_) = false;
  bool lost_write_failing_ ABSL_GUARDED_BY(mu_) = false;  // the last write of `lost` failed
  uint64_t lost_write_failures_ ABSL_GUARDED_BY(mu_) = 0;
  bool lost_file_damaged_ ABSL_GUARDED_BY(mu_) = false;
  // Per segment file name: damaged records already counted into lost_ (or reported).
  std::map<std::string, uint64_t> counted_corrupt_ ABSL_GUARDED_BY(mu_);
  uint64_t dropped_total_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t corrupt_total_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tokenwatch::exporting
