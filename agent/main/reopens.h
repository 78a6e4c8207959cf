#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/time/time.h"
#include "agent/detect/token_read.h"
#include "tokenwatch/token_open.h"

namespace tokenwatch::agent {

// Joins the hooks' folded reopens with the read each one repeats, so that a
// token reread a thousand times in a window costs one record and still
// counts a thousand in its finding.
//
// The hooks report, per (process, token, route), a running total of opens
// they counted without a record (TokenHooks::ReadReopens); each record that
// begins a window carries the total as it was then (folded_before). The
// ledger turns totals into increments and credits each increment to the read
// of the window it belongs to, as that read with `opens` set to the
// increment, for the detector to fold.
//
// Threading: not thread-safe; the event thread owns it.
class ReopenLedger {
 public:
  struct Options {
    // The hooks' dedup window: folded opens happened within their window,
    // which bounds the time a credit carries.
    absl::Duration window = absl::Minutes(10);
    // An entry nobody has touched for this long is forgotten (its process
    // is gone or reads no more); set past the dedup window.
    absl::Duration idle_expiry = absl::Minutes(11);
    // At most this many entries; the least recently touched go first.
    size_t max_entries = 65536;
  };
  explicit ReopenLedger(Options options) : options_(options) {}

  // A record began a window for `key`. Returns the opens folded into the
  // previous window since the last credit, as that window's read (nullopt
  // when there is none to credit). `read` is kept for the new window when
  // the detector judged it unexpected; an expected read needs no credit.
  // `*increment` receives the opens newly counted, credited or not.
  std::optional<detect::TokenRead> OnRecord(const tw_reopen_key& key, uint64_t folded_before,
                                            std::optional<detect::TokenRead> read,
                                            absl::Time now, uint64_t* increment);

  // The hooks' running total for `key`. Returns the increment since the last
  // total, as the window's read with `opens` set (nullopt when nothing grew,
  // or the window's read was expected or is unknown). `*increment` receives
  // the opens newly counted either way, for the metrics.
  std::optional<detect::TokenRead> OnTotal(const tw_reopen_key& key, uint64_t total,
                                           absl::Time now, uint64_t* increment);

  // Forgets entries idle past idle_expiry, then the oldest past max_entries.
  void Expire(absl::Time now);

  size_t size() const { return entries_.size(); }

 private:
  struct Key {
    uint32_t tgid;
    uint64_t start_ticks;
    uint64_t dev;
    uint64_t ino;
    uint32_t access;
    bool operator==(const Key& o) const {
      return tgid == o.tgid && start_ticks == o.start_ticks && dev == o.dev && ino == o.ino &&
             access == o.access;
    }
    template <typename H>
    friend H AbslHashValue(H h, const Key& k) {
      return H::combine(std::move(h), k.tgid, k.start_ticks, k.dev, k.ino, k.access);
    }
  };
  struct Entry {
    uint64_t total = 0;  // the hooks' folded total, as credited so far
    std::optional<detect::TokenRead> read;  // the current window's read, if unexpected
    absl::Time touched;
  };
  static Key MakeKey(const tw_reopen_key& key);
  // The window's read standing for `opens` more opens, last seen by `now`
  // at the latest and within the window at the latest.
  std::optional<detect::TokenRead> Credit(const Entry& entry, uint64_t opens,
                                          absl::Time now) const;

  Options options_;
  absl::flat_hash_map<Key, Entry> entries_;
};

// The reopens key of a token-open record: its reader, file and route.
tw_reopen_key ReopenKeyOf(const tw_token_open& event);

}  // namespace tokenwatch::agent
