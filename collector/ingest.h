#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "collector/store.h"
#include "tokenwatch/v1/finding.pb.h"

namespace tokenwatch::collector {

// FindingHub fans stored findings out to live watchers (WatchFindings).
//
// Threading: Subscribe/Unsubscribe/Publish from any thread. Sinks run inside Publish under the
// hub's mutex and must not block; once Unsubscribe returns, the sink is never called again.
class FindingHub {
 public:
  using Sink = std::function<void(const tokenwatch::v1::Finding&)>;

  uint64_t Subscribe(FindingQuery filter, Sink sink) ABSL_LOCKS_EXCLUDED(mu_);
  void Unsubscribe(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);
  void Publish(const std::vector<const tokenwatch::v1::Finding*>& findings)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The same for stored rows: their payloads are parsed only when someone watches.
  void Publish(const std::vector<const StoredFinding*>& findings) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Watcher {
    FindingQuery filter;
    Sink sink;
  };
  absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Watcher> watchers_ ABSL_GUARDED_BY(mu_);
};

// Ingest commits findings from every Report stream in shared transactions (group commit): one
// synchronous=FULL fsync then covers every finding that arrived while the previous commit ran,
// which is what lets one collector store tens of thousands of findings a second. Each finding's
// `done` callback runs after its transaction committed (or failed); findings from one
// submitter are committed, and their callbacks run, in submission order. Stored or updated
// findings are then published to the hub.
//
// Threading: Submit from any thread; one committer thread, owned here, runs the callbacks.
// The destructor commits what was submitted and joins the thread.
class Ingest {
 public:
  using Done = std::function<void(const absl::Status&)>;

  Ingest(FindingStore* store, FindingHub* hub, size_t max_batch = 4096);
  ~Ingest();
  Ingest(const Ingest&) = delete;
  Ingest& operator=(const Ingest&) = delete;

  // `finding` is a validated finding in its stored form (ToStored).
  void Submit(StoredFinding finding, Done done) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Item {
    StoredFinding finding;
    Done done;
  };
  void Run();

  FindingStore* const store_;
  FindingHub* const hub_;
  const size_t max_batch_;
  absl::Mutex mu_;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tokenwatch::collector
