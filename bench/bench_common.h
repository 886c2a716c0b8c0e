// Shared pieces of the benchmark: the figures it measures, the host-side roles it runs in
// child processes, and the raw AF_UNIX baselines measured the same way.
//
// Every throughput figure is measured by the receiving side, from its first byte to EOF, so
// the raw AF_UNIX baseline and the vsockd paths are timed identically. Callers: vsockd_bench.
// Threading: each role runs single-threaded in its own process.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"

namespace vsockd::bench {

// CPU time one transfer cost each party, in seconds, from the kernel's per-thread and
// per-process CPU clocks (exact, not tick-sampled). Unlike throughput it does not depend on
// how fast this machine wakes an idle CPU, so it shows what vsockd itself costs next to the
// raw baseline's reader in any placement. writer/reader: the two ends (a process, or the
// virtual guest's loop thread); device: vsockd (0 for raw AF_UNIX).
struct CpuCost {
  double writer = 0;
  double device = 0;
  double reader = 0;
  double total() const { return writer + device + reader; }
};

struct ThroughputResult {
  uint64_t bytes = 0;
  double seconds = 0;
  CpuCost cpu;
  double gbps() const { return seconds > 0 ? bytes * 8.0 / seconds / 1e9 : 0; }
};

// Reads a sink role's report ("bytes seconds cpu_seconds") into r's bytes, seconds and
// cpu.reader; false if it is not one.
bool ParseSinkReport(const std::string& report, ThroughputResult* r);

// CPU seconds used so far by the calling thread, by this process, and by process `pid`.
double ThreadCpuSeconds();
double ProcessCpuSeconds();
Result<double> ProcessCpuSeconds(pid_t pid);

struct LatencyResult {
  double p50_us = 0;
  double p99_us = 0;
  double max_us = 0;
};

// Reads until EOF with a 256 KiB buffer; times first byte -> EOF.
Result<ThroughputResult> SinkUntilEof(int fd);
// Writes `total` bytes in `write_size` chunks, then shut down the write side.
Status SourceBytes(int fd, uint64_t total, size_t write_size);
// Echoes everything back until EOF (blocking).
Status EchoUntilEof(int fd);
// Sends `count` messages of `size` bytes, waiting for each echo; returns percentiles.
Result<LatencyResult> PingPong(int fd, size_t size, int count);
LatencyResult Percentiles(std::vector<double> samples_us);

// Raw AF_UNIX baselines between this process and a child process. `type` SOCK_SEQPACKET:
// each write is one message.
Result<ThroughputResult> RawUnixThroughput(uint64_t total, size_t write_size,
                                           int type = SOCK_STREAM);
Result<LatencyResult> RawUnixRoundTrip(size_t size, int count);
Result<double> RawUnixConnectRate(double seconds);

// CPU placement of the benchmark's processes (--placement).
//   kScheduler: none; the kernel places everything (the default).
//   kSplit:     the host side on one CPU (role children, the vsockperf server, the raw
//               baseline's reader), the guest side on another (this process: the virtual
//               guest's loop thread and the raw baseline's writer or reader, and vsockd, as
//               a VM's vCPU and its device would share a core). On a 2-CPU machine this is
//               the one layout where each side has a CPU of its own.
//   kOneCpu:    everything on one CPU: the figures then compare CPU cost per byte, free
//               of cross-CPU wakeup latency (steady even on a noisy machine).
enum class Placement { kScheduler, kSplit, kOneCpu };
// Applies `p` to the calling thread (threads and processes it starts later inherit it) and
// records the host-side CPU for SpawnRoleChild and HostSideArgv. Call before starting
// anything. Errors when the process may use fewer than 2 CPUs (kSplit) or none.
Status ApplyPlacement(Placement p);
// The host side's CPU under kSplit, else -1.
int HostSideCpu();
// `argv` run on the host side's CPU (prefixed with taskset under kSplit).
std::vector<std::string> HostSideArgv(std::vector<std::string> argv);
// Pins the calling process to `cpu` (role children, --cpu).
Status PinToCpu(int cpu);
// --placement's words ("scheduler", "split", "one-cpu") and one-line descriptions.
const char* PlacementName(Placement p);
const char* PlacementNote(Placement p);
std::map<std::string, Placement> PlacementsByName();

// vsockd's host service socket for guest connects to `port`: <uds_path>_<port>, with
// ".seqpacket" appended for SOCK_SEQPACKET services.
std::string HostServicePath(const std::string& uds_path, uint32_t port, bool seqpacket = false);

// Until a socket listens at `path` (not just exists: a one-shot client connects next).
bool WaitForListener(const std::string& path,
                     std::chrono::milliseconds timeout = std::chrono::seconds(10));

// A child running one of our roles (`vsockd_bench --role ...`), stdout on a pipe.
struct Child {
  pid_t pid = -1;
  Fd out;
};
Result<Child> SpawnRoleChild(const std::string& role, const std::string& path, uint32_t port,
                             uint64_t total, size_t write_size);
// Waits for the child; returns its stdout, or an error if it failed.
Result<std::string> FinishRole(Child& child);
// SIGTERM + wait (for roles that serve until stopped).
void StopRole(Child& child);

// A benchmark step that must work: its failure ends the run with the reason.
template <typename T>
T Must(Result<T> r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "benchmark step '%s' failed: %s\n", what, r.error().ToString().c_str());
    std::exit(1);
  }
  return std::move(*r);
}
inline void Must(const Status& st, const char* what) {
  if (!st.ok()) {
    std::fprintf(stderr, "benchmark step '%s' failed: %s\n", what, st.error().ToString().c_str());
    std::exit(1);
  }
}

// Child-process roles (run via `vsockd_bench --role ...`), each reporting one line of
// results on stdout: "bytes seconds cpu_seconds" for sinks. A role name ending in
// "-seqpacket" runs on SOCK_SEQPACKET sockets (vsockd's ".seqpacket" files).
int RunRole(const std::string& role, const std::string& path, uint32_t port, uint64_t total,
            size_t write_size);

}  // namespace vsockd::bench
