// Guest-side helpers for integration tests and benchmarks: drive a vguest::Stream like an
// application would (write a buffer to the end respecting credit, collect what arrives).
// Threading: use them on the guest's loop thread (LoopThread::Call).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/result.h"
#include "tests/integration/harness.h"
#include "vguest/stream.h"

namespace vsockd::testing {

// Everything observed on one stream; atomics so the test thread can poll it.
struct StreamObserver {
  std::atomic<uint64_t> received{0};
  std::atomic<uint64_t> hash{0xcbf29ce484222325ull};
  std::atomic<uint64_t> sent{0};
  std::atomic<bool> eof{false};
  std::atomic<bool> closed{false};
  std::atomic<int> closed_code{-1};
  std::atomic<bool> send_done{false};
  std::vector<uint8_t> data;  // kept only if keep_data (read it after `eof`)
  bool keep_data = false;
};

// Installs callbacks that hash (and optionally keep) incoming data, and writes `out` (if not
// empty) to the end, then half-closes when `shutdown_after` is set.
class StreamDriver {
 public:
  StreamDriver(vguest::Stream* stream, std::shared_ptr<StreamObserver> obs,
               std::vector<uint8_t> out = {}, bool shutdown_after = true, size_t chunk = 65536);
  // Starts writing (call on the loop thread).
  void Start();

 private:
  void WriteMore();
  vguest::Stream* stream_;
  std::shared_ptr<StreamObserver> obs_;
  std::vector<uint8_t> out_;
  size_t offset_ = 0;
  bool shutdown_after_;
  size_t chunk_;
};

// A guest-side echo: writes back what it reads; pauses reading while the peer's credit
// does not let the echo out.
class StreamEcho {
 public:
  explicit StreamEcho(vguest::Stream* stream);

 private:
  void Flush();
  vguest::Stream* stream_;
  std::vector<uint8_t> pending_;
  bool eof_ = false;
};

}  // namespace vsockd::testing
