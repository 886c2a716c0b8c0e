// The scale benchmark's rig (vsockd_scale_bench: scale_bench.cc, scale_isolation.cc): one
// vsockd serving several VMs, each played by a virtual guest on a loop thread of ours, and
// the throughput helpers both parts use (raw AF_UNIX pairs, guests sending to host sinks).
//
// Callers: bench/scale_bench.cc, bench/scale_isolation.cc. Threading: the benchmark's main
// thread drives; each guest lives on its loop thread (MultiVm::Loop).
#pragma once

#include <fmt/format.h>
#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "base/result.h"
#include "bench/bench_common.h"
#include "tests/integration/harness.h"
#include "vguest/guest.h"

namespace vsockd::bench {

using Clock = std::chrono::steady_clock;
using testing::LoopThread;
using testing::Subprocess;
using testing::TempDir;

inline constexpr size_t kWriteSize = 64 * 1024;

// vsockd's memory and fds from /proc.
struct MemSnapshot {
  long rss_kb = -1, anon_kb = -1, shmem_kb = -1, pss_kb = -1, pss_anon_kb = -1;
  long fds = -1;
};
MemSnapshot Snapshot(pid_t pid);

// Reads the child's first line ("ready"), waiting up to `timeout`.
Status WaitReady(Child& child, std::chrono::milliseconds timeout);

// ---- one vsockd with many VMs, each played by a virtual guest ----

class MultiVm {
 public:
  // Writes the YAML config for `vms` VMs (CIDs 3...) and starts vsockd on it.
  // per_vm_yaml[i], when given, is appended to VM i's entry (budget keys, say).
  Status Start(int vms, const std::vector<std::string>& extra,
               const std::vector<std::string>& per_vm_yaml = {}) {
    std::string yaml = "vms:\n";
    for (int i = 0; i < vms; ++i) {
      yaml += fmt::format("  - guest_cid: {}\n    socket: {}\n    uds_path: {}\n", Cid(i),
                          Socket(i), Uds(i));
      if (static_cast<size_t>(i) < per_vm_yaml.size()) yaml += per_vm_yaml[i];
    }
    std::ofstream(dir_.File("vms.yaml")) << yaml;
    std::vector<std::string> argv = {testing::BuiltBinary("src/daemon/vsockd"), "--config",
                                     dir_.File("vms.yaml"), "--log-level", "warn"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    VSOCKD_RETURN_IF_ERROR(proc_.Start(argv, dir_.File("vsockd.log")));
    vms_ = vms;
    for (int i = 0; i < vms; ++i) {
      if (!WaitForListener(Socket(i))) return MakeError(ETIMEDOUT, "vsockd: {}", proc_.Log());
    }
    return OkStatus();
  }

  // Attaches a guest per VM, guest i on loop thread i % threads.
  Status AttachAll(int threads, size_t memory_bytes) {
    for (int t = 0; t < threads; ++t) loops_.push_back(std::make_unique<LoopThread>());
    guests_.resize(vms_);
    for (int i = 0; i < vms_; ++i) {
      vguest::GuestOptions o;
      o.socket_path = Socket(i);
      o.memory_bytes = memory_bytes;
      o.attach_timeout = std::chrono::seconds(10);
      o.connect_timeout =
          std::chrono::seconds(20);  // thousands of connects in flight: never time one out here
      auto g = Loop(i).Call([&] { return vguest::Guest::Attach(Loop(i).loop(), o); });
      if (!g.ok()) return MakeError(g.error().code, "guest {}: {}", i, g.error().context);
      guests_[i] = std::move(*g);
    }
    return OkStatus();
  }

  ~MultiVm() { Detach(); }
  void Detach() {
    for (size_t i = 0; i < guests_.size(); ++i) {
      Loop(i).Call([&] {
        guests_[i].reset();
        return 0;
      });
    }
    guests_.clear();
  }
  int StopDaemon() { return proc_.Stop(SIGTERM, std::chrono::seconds(30)); }

  int vms() const { return vms_; }
  pid_t pid() const { return proc_.pid(); }
  std::string Log() const { return proc_.Log(); }
  LoopThread& Loop(size_t i) { return *loops_[i % loops_.size()]; }
  vguest::Guest* guest(int i) { return guests_[i].get(); }
  static uint64_t Cid(int i) { return 3 + static_cast<uint64_t>(i); }
  std::string Socket(int i) const { return dir_.File(fmt::format("vhost{}", Cid(i))); }
  std::string Uds(int i) const { return dir_.File(fmt::format("vm{}.vsock", Cid(i))); }
  const TempDir& dir() const { return dir_; }

 private:
  TempDir dir_;
  Subprocess proc_;
  int vms_ = 0;
  std::vector<std::unique_ptr<LoopThread>> loops_;
  std::vector<std::unique_ptr<vguest::Guest>> guests_;
};

// Aggregate throughput of n streams: all bytes over the time to the last receiver's EOF.
struct Agg {
  double total_gbps = 0;
  std::vector<double> per_vm_gbps;  // each receiver's own figure
};
// n parallel raw AF_UNIX pairs: a writer thread here, a sink child each.
Result<Agg> RawParallel(int n, uint64_t bytes);
// Guests 0..n-1 of `m` each send `bytes` to a host sink on <uds>_<port> at once.
Result<Agg> GuestsParallel(MultiVm& m, int n, uint64_t bytes, uint32_t port);

double Median(std::vector<double> v);
double Min(const std::vector<double>& v);
double Max(const std::vector<double>& v);

// Part 3 (scale_isolation.cc): a victim VM's throughput alone and while a hostile VM in the
// same vsockd attacks (connections past its budget, each filled to credit against a host
// service that never reads, and a connect storm). The JSON member it adds to the report.
std::string RunAndReportIsolation(int rounds, uint64_t bytes);

}  // namespace vsockd::bench
