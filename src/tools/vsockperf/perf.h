// vsockperf's client and server: the tests themselves, over any Transport.
//
// Role: main.cc parses the command line, builds the Transport and calls RunClient or
// RunServer; the integration tests do the same through the binary. Both are event driven on
// one EventLoop (see transport.h) and return the process exit status.
// Threading: the loop's thread only.
#pragma once

#include <cstdint>
#include <cstdio>

#include "base/event_loop.h"
#include "tools/vsockperf/transport.h"

namespace vsockd::vsockperf {

enum class TestKind { kThroughput, kLatency, kConnectRate };

struct ClientOptions {
  TestKind kind = TestKind::kThroughput;
  double seconds = 10;               // -t (when bytes == 0 and count == 0)
  uint64_t bytes = 0;                // -n: total over all streams (0: by time)
  uint32_t write_size = 128 * 1024;  // -l
  uint32_t streams = 1;              // -P
  bool reverse = false;              // -R: the server sends
  uint32_t msg_size = 64;            // --size (latency)
  uint64_t count = 0;                // --count: round trips / connections (0: by time)
  double interval = 1;               // -i (0: no interval lines)
  bool json = false;                 // --json: one JSON document instead of the human lines
};

// Runs one test against `transport`'s destination and prints the result to `out`.
// 0 on success, 1 when the test failed (refused, reset, protocol error; message on stderr).
int RunClient(EventLoop* loop, Transport* transport, const ClientOptions& options, FILE* out);

// Serves tests on `transport`'s address until the loop stops (SIGINT/SIGTERM); prints a line
// per finished data connection to `out`. 0 on a clean stop, 1 when it cannot listen.
int RunServer(EventLoop* loop, Transport* transport, FILE* out);

}  // namespace vsockd::vsockperf
