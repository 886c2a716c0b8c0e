// vsockd_bench: measures vsockd + vguest against raw AF_UNIX in one run, on this machine.
//
// Figures (each the median of --rounds runs, raw and vsockd interleaved so machine noise
// hits both alike):
//   - stream throughput guest -> host and host -> guest at 4 KiB and 64 KiB writes, timed
//     by the receiver from its first byte to EOF;
//   - SEQPACKET throughput both ways in 4 KiB messages (vsockd's .seqpacket sockets on the
//     host side), against raw AF_UNIX SOCK_SEQPACKET;
//   - 64-byte round trip p50/p99 (guest -> host echo -> guest);
//   - connections per second (connect, 1-byte answer, close).
// Raw AF_UNIX baselines run the same roles between two processes. Prints a table and writes
// JSON with each figure and its ratio to the raw figure.
//
// vsockperf rows: the vsockperf tool (src/tools/vsockperf) over the hybrid path, against a
// second vsockd of its own (vsockd takes one vhost-user frontend, and the rig's guest holds
// the first): `vsockperf -s hvsock://UDS:P` on the host, `vsockperf -c --vguest SOCKET:P`
// as the guest, guest->host and -R (host->guest) at 64 KiB writes, each figure the
// receiver's bytes / first-byte-to-EOF time (vsockperf's "receiver" summary), like the raw
// 64 KiB AF_UNIX figure of the same round it is compared with.
//
// Real-guest rows (issue 5): the same vsockperf runs from inside the test guest (Debian's
// kernel under QEMU, scripts/build-guest.sh's image) against a third vsockd: the guest's
// kernel virtio-vsock driver, not vguest, is the driver. QEMU here emulates the guest CPU
// (TCG: there is no usable KVM on this machine), so these rows measure the emulator more
// than vsockd; they are reported as what they are, next to the vguest rows. Skipped (with a
// note) when there is no guest image; --no-vm skips them.
//
// Processes: this one runs the virtual guest (vguest on its own loop thread); vsockd is a
// child process; the host side of each figure is a child running `vsockd_bench --role ...`.
#include <fmt/format.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <iterator>
#include <map>
#include <thread>

#include "base/run_main.h"
#include "bench/bench_common.h"
#include "tests/integration/harness.h"
#include "tests/vm/vm.h"
#include "vguest/guest.h"

namespace vsockd::bench {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using testing::Daemon;
using testing::LoopThread;
using testing::TempDir;

struct Options {
  uint64_t bytes = 512ull << 20;
  int rounds = 3;
  int rtt_count = 20000;
  double conn_seconds = 2.0;
  std::string json_path = "bench-results.json";
  std::string vsockd_args;
  // The virtual guest's receive buffer per socket (buf_alloc). Linux's default is 256 KiB
  // (SO_VM_SOCKETS_BUFFER_SIZE); larger values show how much host -> guest throughput the
  // guest's credit window, not vsockd, is holding back.
  uint32_t guest_buf_alloc = 256 * 1024;
  // Runs only the figures whose name contains this (for profiling one path); empty: all.
  std::string only;
  // The test guest image for the real-guest rows; empty: no real-guest rows.
  std::string vm_image;
  Placement placement = Placement::kScheduler;
};

// Everything that runs against one daemon + one attached guest.
class VsockRig {
 public:
  Status Start(const std::vector<std::string>& extra_args, uint32_t guest_buf_alloc) {
    daemon_ = std::make_unique<Daemon>(dir_, 3, extra_args);
    VSOCKD_RETURN_IF_ERROR(daemon_->Start());
    vguest::GuestOptions options;
    options.socket_path = daemon_->socket_path();
    options.buf_alloc = guest_buf_alloc;
    auto guest = loop_.Call([&] { return vguest::Guest::Attach(loop_.loop(), options); });
    if (!guest.ok()) return guest.take_error();
    guest_ = std::move(*guest);
    return OkStatus();
  }
  ~VsockRig() {
    loop_.Call([&] {
      guest_.reset();
      return 0;
    });
  }

  uint32_t NextPort() { return next_port_++; }

  // CPU seconds so far of vsockd and of the virtual guest's loop thread (CpuCost).
  struct CpuMark {
    double device = 0;
    double guest = 0;
  };
  Result<CpuMark> MarkCpu() {
    auto device = ProcessCpuSeconds(daemon_->pid());
    if (!device.ok()) return device.take_error();
    return CpuMark{*device, loop_.Call([] { return ThreadCpuSeconds(); })};
  }

  // The guest writes `total` bytes in `write_size` writes to a host sink. `type`
  // VIRTIO_VSOCK_TYPE_SEQPACKET: each write is one message, to vsockd's .seqpacket file.
  Result<ThroughputResult> GuestToHost(uint64_t total, size_t write_size,
                                       uint16_t type = vsock::VIRTIO_VSOCK_TYPE_STREAM) {
    const bool seqpacket = type == vsock::VIRTIO_VSOCK_TYPE_SEQPACKET;
    uint32_t port = NextPort();
    auto mark = MarkCpu();
    if (!mark.ok()) return mark.take_error();
    auto child = SpawnRoleChild(seqpacket ? "host-sink-seqpacket" : "host-sink",
                                daemon_->uds_path(), port, 0, 0);
    if (!child.ok()) return child.take_error();
    if (!WaitForListener(HostServicePath(daemon_->uds_path(), port, seqpacket))) {
      StopRole(*child);
      return MakeError(ETIMEDOUT, "host sink did not start");
    }
    std::promise<Status> sent;
    std::vector<uint8_t> buf(write_size, 0x5a);
    uint64_t offset = 0;
    vguest::Stream* stream = nullptr;
    std::function<void()> pump = [&] {
      while (offset < total) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(write_size, total - offset));
        if (seqpacket) {
          // Queued whole; EAGAIN while the previous message is still going out.
          Status st = stream->WriteMessage(std::span<const uint8_t>(buf.data(), want));
          if (!st.ok() && st.error().code == EAGAIN) return;
          if (!st.ok()) {
            sent.set_value(st);
            return;
          }
          offset += want;
          continue;
        }
        size_t n = stream->Write(buf.data(), want);
        offset += n;
        if (n < want) return;
      }
      if (seqpacket && stream->message_backlog() > 0) return;  // on_writable: the last one out
      stream->Shutdown(false, true);
      sent.set_value(OkStatus());
    };
    loop_.Call([&] {
      guest_->Connect(
          port,
          [&](vguest::Stream* s, const Status& st) {
            if (!st.ok()) {
              sent.set_value(st);
              return;
            }
            stream = s;
            s->on_writable = pump;
            pump();
          },
          vsock::VMADDR_CID_HOST, type);
      return 0;
    });
    Status st = sent.get_future().get();
    auto out = FinishRole(*child);
    loop_.Call([&] {
      if (stream != nullptr) stream->Close();
      return 0;
    });
    if (!st.ok()) return st.take_error();
    if (!out.ok()) return out.take_error();
    ThroughputResult r;
    if (!ParseSinkReport(*out, &r) || r.bytes != total) {
      return MakeError(EIO, "host sink reported '{}' (expected {} bytes)", *out, total);
    }
    auto end = MarkCpu();
    if (!end.ok()) return end.take_error();
    r.cpu.writer = end->guest - mark->guest;
    r.cpu.device = end->device - mark->device;
    return r;
  }

  // A host program connects through the hybrid socket and writes `total` bytes; the guest
  // sinks them (`type` VIRTIO_VSOCK_TYPE_SEQPACKET: as messages, through vsockd's .seqpacket
  // socket).
  Result<ThroughputResult> HostToGuest(uint64_t total, size_t write_size,
                                       uint16_t type = vsock::VIRTIO_VSOCK_TYPE_STREAM) {
    const bool seqpacket = type == vsock::VIRTIO_VSOCK_TYPE_SEQPACKET;
    uint32_t port = NextPort();
    auto mark = MarkCpu();
    if (!mark.ok()) return mark.take_error();
    std::promise<ThroughputResult> done;
    ThroughputResult r;
    Clock::time_point first{};
    vguest::Stream* stream = nullptr;
    VSOCKD_RETURN_IF_ERROR(loop_.Call([&] {
      return guest_->Listen(
          port,
          [&](vguest::Stream* s) {
            stream = s;
            auto count = [&](std::span<const uint8_t> d) {
              if (r.bytes == 0) first = Clock::now();
              r.bytes += d.size();
            };
            if (seqpacket) {
              s->on_message = [count](std::span<const uint8_t> m, uint32_t) { count(m); };
            } else {
              s->on_data = count;
            }
            s->on_eof = [&] {
              r.seconds = std::chrono::duration<double>(Clock::now() - first).count();
              done.set_value(r);
              stream->Close();  // last: it destroys this callback
            };
          },
          type);
    }));
    auto child = SpawnRoleChild(seqpacket ? "host-source-seqpacket" : "host-source",
                                daemon_->uds_path(), port, total, write_size);
    if (!child.ok()) return child.take_error();
    auto f = done.get_future();
    if (f.wait_for(300s) != std::future_status::ready) {
      StopRole(*child);
      return MakeError(ETIMEDOUT, "host -> guest transfer did not finish");
    }
    ThroughputResult got = f.get();
    auto out = FinishRole(*child);
    loop_.Call([&] {
      guest_->Unlisten(port);
      return 0;
    });
    if (!out.ok()) return out.take_error();
    if (got.bytes != total) return MakeError(EIO, "guest got {} of {} bytes", got.bytes, total);
    if (std::sscanf(out->c_str(), "done %lf", &got.cpu.writer) != 1) {
      return MakeError(EIO, "host source reported '{}'", *out);
    }
    auto end = MarkCpu();
    if (!end.ok()) return end.take_error();
    got.cpu.device = end->device - mark->device;
    got.cpu.reader = end->guest - mark->guest;
    return got;
  }

  // 64-byte ping-pong from the guest to a host echo service.
  Result<LatencyResult> RoundTrip(size_t size, int count) {
    uint32_t port = NextPort();
    auto child = SpawnRoleChild("host-echo", daemon_->uds_path(), port, 0, 0);
    if (!child.ok()) return child.take_error();
    if (!WaitForListener(HostServicePath(daemon_->uds_path(), port))) {
      StopRole(*child);
      return MakeError(ETIMEDOUT, "host echo did not start");
    }
    std::promise<Status> finished;
    std::vector<double> samples;
    samples.reserve(count);
    std::vector<uint8_t> msg(size, 0x42);
    size_t got = 0;
    Clock::time_point t0;
    vguest::Stream* stream = nullptr;
    auto send_one = [&] {
      got = 0;
      t0 = Clock::now();
      stream->Write(msg.data(), msg.size());
    };
    loop_.Call([&] {
      guest_->Connect(port, [&](vguest::Stream* s, const Status& st) {
        if (!st.ok()) {
          finished.set_value(st);
          return;
        }
        stream = s;
        s->on_data = [&](std::span<const uint8_t> d) {
          got += d.size();
          if (got < size) return;
          samples.push_back(std::chrono::duration<double>(Clock::now() - t0).count() * 1e6);
          if (static_cast<int>(samples.size()) == count) {
            finished.set_value(OkStatus());
            stream->Close();  // last: it destroys this callback
            return;
          }
          send_one();
        };
        send_one();
      });
      return 0;
    });
    Status st = finished.get_future().get();
    StopRole(*child);
    if (!st.ok()) return st.take_error();
    return Percentiles(std::move(samples));
  }

  // Connections per second: connect, read the acceptor's byte, close; repeat.
  Result<double> ConnectRate(double seconds) {
    uint32_t port = NextPort();
    auto child = SpawnRoleChild("acceptor", daemon_->uds_path(), port, 0, 0);
    if (!child.ok()) return child.take_error();
    if (!WaitForListener(HostServicePath(daemon_->uds_path(), port))) {
      StopRole(*child);
      return MakeError(ETIMEDOUT, "acceptor did not start");
    }
    std::promise<Status> finished;
    uint64_t count = 0;
    auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    Clock::time_point start = Clock::now();
    std::function<void()> next = [&] {
      if (Clock::now() >= deadline) {
        finished.set_value(OkStatus());
        return;
      }
      guest_->Connect(port, [&](vguest::Stream* s, const Status& st) {
        if (!st.ok()) {
          finished.set_value(st);
          return;
        }
        s->on_data = [&, s](std::span<const uint8_t>) {
          ++count;
          loop_.loop()->Defer(next);
          s->Close();  // last: it destroys this callback
        };
      });
    };
    loop_.Call([&] {
      start = Clock::now();
      next();
      return 0;
    });
    Status st = finished.get_future().get();
    double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    StopRole(*child);
    if (!st.ok()) return st.take_error();
    return count / elapsed;
  }

 private:
  TempDir dir_;
  std::unique_ptr<Daemon> daemon_;
  LoopThread loop_;
  std::unique_ptr<vguest::Guest> guest_;
  uint32_t next_port_ = 20000;
};

// The receiver figure of `vsockperf --json` output: {"summary": ... "receiver": {"bytes": N,
// "seconds": S, ...}}; N must be `total`.
Result<ThroughputResult> ParseVsockperfReceiver(const std::string& out, uint64_t total) {
  size_t at = out.find("\"summary\"");
  at = at == std::string::npos ? at : out.find("\"receiver\": {", at);
  ThroughputResult r;
  if (at == std::string::npos ||
      std::sscanf(out.c_str() + at, "\"receiver\": {\"bytes\": %lu, \"seconds\": %lf", &r.bytes,
                  &r.seconds) != 2 ||
      r.bytes != total) {
    return MakeError(EIO, "unexpected vsockperf output (expected {} bytes): {}", total, out);
  }
  return r;
}

// vsockperf processes against their own vsockd (see the top of the file).
class VsockperfRig {
 public:
  Status Start(const std::vector<std::string>& extra_args) {
    daemon_ = std::make_unique<Daemon>(dir_, 3, extra_args);
    VSOCKD_RETURN_IF_ERROR(daemon_->Start());
    VSOCKD_RETURN_IF_ERROR(server_.Start(
        HostSideArgv({Binary(), "-s", fmt::format("hvsock://{}:{}", daemon_->uds_path(), kPort)}),
        dir_.File("vsockperf-server.log")));
    if (!WaitForListener(fmt::format("{}_{}", daemon_->uds_path(), kPort))) {
      return MakeError(ETIMEDOUT, "vsockperf server did not start: {}", server_.Log());
    }
    return OkStatus();
  }
  ~VsockperfRig() { server_.Stop(); }

  // One `vsockperf -c --vguest` run of `total` bytes (reverse: the host sends); the
  // receiver's figure.
  Result<ThroughputResult> Run(bool reverse, uint64_t total, size_t write_size) {
    std::string cmd = fmt::format("{} -c --vguest {}:{} -n {} -l {} -i 0 --json{} 2>{}", Binary(),
                                  daemon_->socket_path(), kPort, total, write_size,
                                  reverse ? " -R" : "", dir_.File("vsockperf-client.err"));
    FILE* p = ::popen(cmd.c_str(), "r");
    if (p == nullptr) return ErrnoError("popen {}", cmd);
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int status = ::pclose(p);
    if (status != 0) {
      std::ifstream err(dir_.File("vsockperf-client.err"));
      std::string why((std::istreambuf_iterator<char>(err)), std::istreambuf_iterator<char>());
      return MakeError(EIO, "vsockperf client failed (status {}): {}", status, why);
    }
    return ParseVsockperfReceiver(out, total);
  }

 private:
  static constexpr uint32_t kPort = 5201;
  static std::string Binary() { return testing::BuiltBinary("src/tools/vsockperf/vsockperf"); }

  TempDir dir_;
  std::unique_ptr<Daemon> daemon_;
  testing::Subprocess server_;
};

// vsockperf inside the real test guest, against a vsockperf server on the host's hybrid
// socket of a vsockd of its own.
class VmRig {
 public:
  Status Start(const std::string& image, const std::vector<std::string>& extra_args) {
    VSOCKD_RETURN_IF_ERROR(vmtest::CheckImage(image));
    VSOCKD_RETURN_IF_ERROR(vmtest::CheckQemu());
    daemon_ = std::make_unique<Daemon>(dir_, 3, extra_args);
    VSOCKD_RETURN_IF_ERROR(daemon_->Start());
    VSOCKD_RETURN_IF_ERROR(
        server_.Start(HostSideArgv({testing::BuiltBinary("src/tools/vsockperf/vsockperf"), "-s",
                                    fmt::format("hvsock://{}:{}", daemon_->uds_path(), kPort)}),
                      dir_.File("vsockperf-server.log")));
    if (!WaitForListener(fmt::format("{}_{}", daemon_->uds_path(), kPort))) {
      return MakeError(ETIMEDOUT, "vsockperf server did not start: {}", server_.Log());
    }
    vmtest::VmOptions vo;
    vo.image_dir = image;
    vo.vhost_socket = daemon_->socket_path();
    vo.name = "bench";
    vo.console_log_path = dir_.File("console.log");
    auto vm = vmtest::Vm::Boot(vo);
    if (!vm.ok()) return vm.take_error();
    vm_ = std::move(*vm);
    return vm_->WaitForVsockDevice();
  }
  ~VmRig() {
    if (vm_ && vm_->Running()) (void)vm_->Poweroff(30s);
    server_.Stop();
  }

  Result<ThroughputResult> Throughput(bool reverse, uint64_t total, size_t write_size) {
    auto r = vm_->Run(fmt::format("vsockperf -c vsock://2:{} -n {} -l {} -i 0 --json{}", kPort,
                                  total, write_size, reverse ? " -R" : ""),
                      300s);
    if (!r.ok()) return r.take_error();
    if (r->exit_status != 0) return MakeError(EIO, "vsockperf in the guest: {}", r->output);
    return ParseVsockperfReceiver(r->output, total);
  }

  // p50 of `count` 64-byte round trips from the guest (the host server echoes).
  Result<double> RoundTripP50(int count) {
    auto r =
        vm_->Run(fmt::format("vsockperf -c vsock://2:{} --latency --size 64 --count {} -i 0 --json",
                             kPort, count),
                 300s);
    if (!r.ok()) return r.take_error();
    if (r->exit_status != 0) return MakeError(EIO, "vsockperf in the guest: {}", r->output);
    size_t at = r->output.find("\"summary\"");
    at = at == std::string::npos ? at : r->output.find("\"p50_us\": ", at);
    double p50 = 0;
    if (at == std::string::npos ||
        std::sscanf(r->output.c_str() + at, "\"p50_us\": %lf", &p50) != 1) {
      return MakeError(EIO, "unexpected vsockperf latency output: {}", r->output);
    }
    return p50;
  }

 private:
  static constexpr uint32_t kPort = 5201;
  TempDir dir_;
  std::unique_ptr<Daemon> daemon_;
  testing::Subprocess server_;
  std::unique_ptr<vmtest::Vm> vm_;
};

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Figure {
  std::string name;  // e.g. "throughput_g2h_4k"
  std::string unit;  // "Gbit/s", "us", "conn/s"
  bool lower_is_better = false;
  std::vector<double> vsock, raw;
  // Throughput figures of our own transfers: what each run cost in CPU (CpuCost).
  std::vector<CpuCost> vsock_cpu, raw_cpu;
};

// Milliseconds of CPU per GiB moved: the median over runs of each part of CpuCost.
struct CpuMs {
  double writer = 0, device = 0, reader = 0, total = 0;
};
CpuMs CpuMsPerGib(const std::vector<CpuCost>& runs, uint64_t bytes) {
  const double per_gib = 1e3 * static_cast<double>(1ull << 30) / static_cast<double>(bytes);
  auto median = [&](auto part) {
    std::vector<double> v;
    v.reserve(runs.size());
    for (const CpuCost& c : runs) v.push_back(part(c) * per_gib);
    return Median(std::move(v));
  };
  return CpuMs{median([](const CpuCost& c) { return c.writer; }),
               median([](const CpuCost& c) { return c.device; }),
               median([](const CpuCost& c) { return c.reader; }),
               median([](const CpuCost& c) { return c.total(); })};
}

int RunBench(const Options& o) {
  // First: everything started from here on inherits it.
  if (auto st = ApplyPlacement(o.placement); !st.ok()) {
    std::fprintf(stderr, "%s\n", st.error().ToString().c_str());
    return 2;
  }
  std::vector<std::string> extra = {"--log-level", "warn"};
  if (!o.vsockd_args.empty()) {
    size_t pos = 0;
    std::string s = o.vsockd_args;
    while ((pos = s.find(' ')) != std::string::npos) {
      if (pos > 0) extra.push_back(s.substr(0, pos));
      s.erase(0, pos + 1);
    }
    if (!s.empty()) extra.push_back(s);
  }
  VsockRig rig;
  if (auto st = rig.Start(extra, o.guest_buf_alloc); !st.ok()) {
    std::fprintf(stderr, "cannot start vsockd + vguest: %s\n", st.error().ToString().c_str());
    return 1;
  }
  // Figure indices: the stream throughput figures first (guest->host then host->guest, 4 KiB
  // then 64 KiB: the loop below relies on that order).
  enum : size_t {
    kSeqG2h = 4,
    kSeqH2g,
    kRttP50,
    kRttP99,
    kConnRate,
    kPerfG2h,
    kPerfH2g,
    kVmG2h,
    kVmH2g,
    kVmRtt,
  };
  std::vector<Figure> figs = {
      {"throughput guest->host 4 KiB writes", "Gbit/s", false, {}, {}},
      {"throughput guest->host 64 KiB writes", "Gbit/s", false, {}, {}},
      {"throughput host->guest 4 KiB writes", "Gbit/s", false, {}, {}},
      {"throughput host->guest 64 KiB writes", "Gbit/s", false, {}, {}},
      {"seqpacket guest->host 4 KiB messages", "Gbit/s", false, {}, {}},
      {"seqpacket host->guest 4 KiB messages", "Gbit/s", false, {}, {}},
      {"round trip 64 B p50", "us", true, {}, {}},
      {"round trip 64 B p99", "us", true, {}, {}},
      {"connections per second", "conn/s", false, {}, {}},
      {"vsockperf guest->host 64 KiB (hybrid)", "Gbit/s", false, {}, {}},
      {"vsockperf host->guest 64 KiB (-R)", "Gbit/s", false, {}, {}},
      {"real guest (TCG) vsockperf guest->host 64 KiB", "Gbit/s", false, {}, {}},
      {"real guest (TCG) vsockperf host->guest 64 KiB", "Gbit/s", false, {}, {}},
      {"real guest (TCG) round trip 64 B p50", "us", true, {}, {}},
  };
  auto wanted = [&](size_t i) { return figs[i].name.find(o.only) != std::string::npos; };
  VsockperfRig perf;
  if (wanted(kPerfG2h) || wanted(kPerfH2g)) {
    if (auto st = perf.Start(extra); !st.ok()) {
      std::fprintf(stderr, "cannot start vsockd + vsockperf: %s\n", st.error().ToString().c_str());
      return 1;
    }
  }
  VmRig vm;
  bool vm_rows = !o.vm_image.empty() && (wanted(kVmG2h) || wanted(kVmH2g) || wanted(kVmRtt));
  if (vm_rows) {
    std::fprintf(stderr, "booting the test guest for the real-guest rows\n");
    if (auto st = vm.Start(o.vm_image, extra); !st.ok()) {
      std::fprintf(stderr, "cannot boot the test guest: %s\n", st.error().ToString().c_str());
      return 1;
    }
  }
  // Under TCG the guest moves a few hundred MB/s: a smaller transfer keeps rounds short.
  const uint64_t vm_bytes = std::min<uint64_t>(o.bytes, 256ull << 20);
  for (int round = 0; round < o.rounds; ++round) {
    std::fprintf(stderr, "round %d/%d\n", round + 1, o.rounds);
    double raw64 = -1;  // this round's raw 64 KiB figure, for the vsockperf rows too
    for (int i = 0; i < 2; ++i) {
      size_t ws = i == 0 ? 4096 : 65536;
      if (!wanted(i) && !wanted(2 + i)) continue;
      ThroughputResult raw = Must(RawUnixThroughput(o.bytes, ws), "raw throughput");
      if (i == 1) raw64 = raw.gbps();
      for (Figure* f : {&figs[i], &figs[2 + i]}) {  // AF_UNIX is symmetric: one baseline per size
        f->raw.push_back(raw.gbps());
        f->raw_cpu.push_back(raw.cpu);
      }
      if (wanted(i)) {
        ThroughputResult v = Must(rig.GuestToHost(o.bytes, ws), "guest->host");
        figs[i].vsock.push_back(v.gbps());
        figs[i].vsock_cpu.push_back(v.cpu);
      }
      if (wanted(2 + i)) {
        ThroughputResult v = Must(rig.HostToGuest(o.bytes, ws), "host->guest");
        figs[2 + i].vsock.push_back(v.gbps());
        figs[2 + i].vsock_cpu.push_back(v.cpu);
      }
    }
    if (wanted(kSeqG2h) || wanted(kSeqH2g)) {
      ThroughputResult raw =
          Must(RawUnixThroughput(o.bytes, 4096, SOCK_SEQPACKET), "raw seqpacket throughput");
      for (size_t i : {kSeqG2h, kSeqH2g}) {
        if (!wanted(i)) continue;
        figs[i].raw.push_back(raw.gbps());
        figs[i].raw_cpu.push_back(raw.cpu);
        ThroughputResult v =
            i == kSeqG2h ? Must(rig.GuestToHost(o.bytes, 4096, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET),
                                "seqpacket guest->host")
                         : Must(rig.HostToGuest(o.bytes, 4096, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET),
                                "seqpacket host->guest");
        figs[i].vsock.push_back(v.gbps());
        figs[i].vsock_cpu.push_back(v.cpu);
      }
    }
    if (wanted(kRttP50) || wanted(kRttP99)) {
      auto raw_rtt = Must(RawUnixRoundTrip(64, o.rtt_count), "raw round trip");
      auto rtt = Must(rig.RoundTrip(64, o.rtt_count), "round trip");
      figs[kRttP50].raw.push_back(raw_rtt.p50_us);
      figs[kRttP50].vsock.push_back(rtt.p50_us);
      figs[kRttP99].raw.push_back(raw_rtt.p99_us);
      figs[kRttP99].vsock.push_back(rtt.p99_us);
    }
    if (wanted(kConnRate)) {
      figs[kConnRate].raw.push_back(Must(RawUnixConnectRate(o.conn_seconds), "raw connect rate"));
      figs[kConnRate].vsock.push_back(Must(rig.ConnectRate(o.conn_seconds), "connect rate"));
    }
    if (wanted(kPerfG2h) || wanted(kPerfH2g)) {
      if (raw64 < 0) raw64 = Must(RawUnixThroughput(o.bytes, 65536), "raw throughput").gbps();
      for (size_t i : {kPerfG2h, kPerfH2g}) {
        if (!wanted(i)) continue;
        figs[i].raw.push_back(raw64);
        figs[i].vsock.push_back(
            Must(perf.Run(/*reverse=*/i == kPerfH2g, o.bytes, 65536), "vsockperf").gbps());
      }
    }
    if (vm_rows) {
      // The raw baseline of the same size as the guest's transfers.
      double raw_vm = raw64 >= 0 && vm_bytes == o.bytes
                          ? raw64
                          : Must(RawUnixThroughput(vm_bytes, 65536), "raw throughput").gbps();
      for (size_t i : {kVmG2h, kVmH2g}) {
        if (!wanted(i)) continue;
        figs[i].raw.push_back(raw_vm);
        figs[i].vsock.push_back(
            Must(vm.Throughput(/*reverse=*/i == kVmH2g, vm_bytes, 65536), "real guest").gbps());
      }
      if (wanted(kVmRtt)) {
        figs[kVmRtt].raw.push_back(
            Must(RawUnixRoundTrip(64, o.rtt_count), "raw round trip").p50_us);
        figs[kVmRtt].vsock.push_back(Must(vm.RoundTripP50(2000), "real guest round trip"));
      }
    }
  }

  std::printf(
      "\nvsockd + vguest vs raw AF_UNIX (median of %d rounds, %lu MiB per transfer, guest "
      "buf_alloc %u)\nplacement %s: %s\n\n",
      o.rounds, static_cast<unsigned long>(o.bytes >> 20), o.guest_buf_alloc,
      PlacementName(o.placement), PlacementNote(o.placement));
  // "per round": the lowest and highest ratio of one round's pair (vsockd and raw measured
  // back to back); a wide range says the machine, not vsockd, moved the median.
  std::printf("| %-46s | %12s | %12s | %7s | %13s |\n", "figure", "vsockd", "raw AF_UNIX", "ratio",
              "per round");
  std::printf("|%s|%s|%s|%s|%s|\n", std::string(48, '-').c_str(), std::string(14, '-').c_str(),
              std::string(14, '-').c_str(), std::string(9, '-').c_str(),
              std::string(15, '-').c_str());
  std::string json = fmt::format(
      "{{\n  \"unit_note\": \"ratio = vsockd / raw AF_UNIX\",\n  \"rounds\": {},\n  "
      "\"bytes_per_transfer\": {},\n  \"guest_buf_alloc\": {},\n  \"placement\": \"{}\",\n  "
      "\"figures\": [\n",
      o.rounds, o.bytes, o.guest_buf_alloc, PlacementName(o.placement));
  bool first = true;
  std::string cpu_rows;  // the CPU-cost table, printed after the figures
  for (size_t i = 0; i < figs.size(); ++i) {
    const Figure& f = figs[i];
    if (f.vsock.empty()) continue;  // not run (--only)
    double v = Median(f.vsock), r = Median(f.raw);
    double ratio = r > 0 ? v / r : 0;
    std::vector<double> round_ratios;
    if (f.vsock.size() == f.raw.size()) {
      for (size_t k = 0; k < f.vsock.size(); ++k) {
        if (f.raw[k] > 0) round_ratios.push_back(f.vsock[k] / f.raw[k]);
      }
    }
    std::string range = "-";
    if (!round_ratios.empty()) {
      auto [lo, hi] = std::minmax_element(round_ratios.begin(), round_ratios.end());
      range = fmt::format("{:.2f}-{:.2f}", *lo, *hi);
    }
    const char* unit = f.unit == "Gbit/s" ? "Gb" : (f.unit == "us" ? "us" : "/s");
    std::printf("| %-46s | %8.2f %-3s | %8.2f %-3s | %6.2fx | %13s |\n", f.name.c_str(), v, unit, r,
                unit, ratio, range.c_str());
    if (!first) json += ",\n";
    first = false;
    json += fmt::format(
        "    {{\"name\": \"{}\", \"unit\": \"{}\", \"vsockd\": {:.4f}, \"raw_af_unix\": {:.4f}, "
        "\"ratio\": {:.4f}, \"lower_is_better\": {}, \"vsockd_runs\": [{}], \"raw_runs\": "
        "[{}], \"round_ratios\": [{:.4f}]",
        f.name, f.unit, v, r, ratio, f.lower_is_better, fmt::join(f.vsock, ", "),
        fmt::join(f.raw, ", "), fmt::join(round_ratios, ", "));
    if (!f.vsock_cpu.empty() && !f.raw_cpu.empty()) {
      const CpuMs v_ms = CpuMsPerGib(f.vsock_cpu, o.bytes);
      const CpuMs r_ms = CpuMsPerGib(f.raw_cpu, o.bytes);
      const double cpu_ratio = r_ms.total > 0 ? v_ms.total / r_ms.total : 0;
      json += fmt::format(
          ", \"cpu_ms_per_gib\": {{\"vsockd\": {{\"writer\": {:.2f}, \"vsockd\": {:.2f}, "
          "\"reader\": {:.2f}, \"total\": {:.2f}}}, \"raw_af_unix\": {{\"writer\": {:.2f}, "
          "\"reader\": {:.2f}, \"total\": {:.2f}}}, \"ratio\": {:.4f}}}",
          v_ms.writer, v_ms.device, v_ms.reader, v_ms.total, r_ms.writer, r_ms.reader, r_ms.total,
          cpu_ratio);
      cpu_rows += fmt::format(
          "| {:<36} | {:6.1f} + {:6.1f} + {:6.1f} = {:6.1f} | {:6.1f} + {:6.1f} = {:6.1f} | "
          "{:5.2f}x |\n",
          f.name.starts_with("throughput ") ? f.name.substr(11) : f.name, v_ms.writer, v_ms.device,
          v_ms.reader, v_ms.total, r_ms.writer, r_ms.reader, r_ms.total, cpu_ratio);
    }
    json += "}";
  }
  if (!cpu_rows.empty()) {
    std::printf(
        "\nCPU time per GiB moved, ms (the same transfers; per-thread CPU clocks, so free of "
        "wakeup\nlatency; lower is better, ratio = vsockd path / raw)\n");
    std::printf("| %-36s | %-33s | %-24s | %6s |\n", "transfer", "vsockd: writer + vsockd + reader",
                "raw: writer + reader", "ratio");
    std::printf("|%s|%s|%s|%s|\n", std::string(38, '-').c_str(), std::string(35, '-').c_str(),
                std::string(26, '-').c_str(), std::string(8, '-').c_str());
    std::printf("%s", cpu_rows.c_str());
  }
  if (!vm_rows) {
    std::printf("\n(no real-guest rows: %s)\n",
                o.vm_image.empty() ? "--no-vm, or no guest image (scripts/build-guest.sh)"
                                   : "not selected by --only");
  } else {
    std::printf(
        "\nreal guest rows: Debian's kernel under QEMU TCG (emulated CPU, no KVM here) through "
        "vsockd;\nthey measure the emulator more than vsockd, and are not a target.\n");
  }
  json += "\n  ]\n}\n";
  std::ofstream(o.json_path) << json;
  std::printf("\nJSON: %s\n", o.json_path.c_str());
  return 0;
}

}  // namespace
}  // namespace vsockd::bench

int BenchMain(int argc, char** argv) {
  CLI::App app{"vsockd benchmark: vsockd + vguest against raw AF_UNIX, measured in one run"};
  vsockd::bench::Options o;
  std::string role, path;
  uint32_t port = 0;
  uint64_t write_size = 0;
  app.add_option("--json", o.json_path, "where to write the JSON results");
  app.add_option("--bytes", o.bytes, "bytes per throughput transfer");
  app.add_option("--rounds", o.rounds, "rounds; each figure is the median");
  app.add_option("--rtt-count", o.rtt_count, "round trips per latency measurement");
  app.add_option("--conn-seconds", o.conn_seconds, "seconds per connection-rate measurement");
  app.add_option("--vsockd-args", o.vsockd_args, "extra vsockd flags, space separated");
  app.add_option("--guest-buf-alloc", o.guest_buf_alloc,
                 "the virtual guest's per-socket receive buffer (Linux default 262144)");
  app.add_option("--only", o.only, "run only the figures whose name contains this text");
  bool no_vm = false;
  o.vm_image = vsockd::vmtest::DefaultImageDir();
  app.add_option("--vm-image", o.vm_image, "test guest image for the real-guest rows");
  app.add_flag("--no-vm", no_vm, "skip the real-guest rows");
  app.add_option("--placement", o.placement,
                 "CPU placement: scheduler (default: the kernel decides), split (host side on "
                 "one CPU, guest side and vsockd on another), one-cpu (all on one CPU: CPU "
                 "cost per byte)")
      ->transform(CLI::CheckedTransformer(vsockd::bench::PlacementsByName(), CLI::ignore_case));
  int role_cpu = -1;
  // Internal: the host-side roles run in child processes.
  app.add_option("--role", role)->group("");
  app.add_option("--path", path)->group("");
  app.add_option("--port", port)->group("");
  app.add_option("--write-size", write_size)->group("");
  app.add_option("--cpu", role_cpu)->group("");
  CLI11_PARSE(app, argc, argv);
  if (!role.empty()) {
    if (role_cpu >= 0) {
      if (auto st = vsockd::bench::PinToCpu(role_cpu); !st.ok()) {
        std::fprintf(stderr, "role %s: %s\n", role.c_str(), st.error().ToString().c_str());
        return 1;
      }
    }
    return vsockd::bench::RunRole(role, path, port, o.bytes, static_cast<size_t>(write_size));
  }
  if (no_vm || !vsockd::vmtest::CheckImage(o.vm_image).ok()) o.vm_image.clear();
  return vsockd::bench::RunBench(o);
}

int main(int argc, char** argv) { return vsockd::RunMain("vsockd_bench", BenchMain, argc, argv); }
