// vsockd_scale_bench: how one vsockd process scales with many VMs and connections (issue 6).
//
// Part 1, scale (one vsockd serving --vms VMs from a --config file, each VM played by a
// virtual guest; the guests are spread over --guest-threads event-loop threads here):
//   - vsockd's memory (VmRSS, RssAnon, RssShmem from /proc/PID/status, Pss from
//     smaps_rollup when readable) and open fds: with no VM attached, with every VM attached
//     and idle, and with --conns-per-vm idle guest -> host connections per VM; hence KiB per
//     VM and per idle connection. RssShmem is guest RAM (the shared memfd) that vsockd
//     touched; RssAnon is vsockd's own heap and stacks.
//   - guest -> host connection set-up rate: VM 0's connections alone first, then every
//     other VM at once (each guest keeps --connect-window connects in flight);
//   - host -> guest (hybrid "CONNECT <port>") set-up rate for a sample: one blocking client
//     to VM 0, then four clients round-robin over all VMs.
//   The host ends of the idle connections are held by "holder" child processes (one Unix
//   listener per VM on <uds-path>_<port>, accept and keep), so no process of ours needs more
//   fds than the usual hard limit.
//
// Part 2, aggregate throughput: 1, 2 and 4 VMs sending one guest -> host stream each
// (64 KiB writes, --bytes-per-vm each) at the same time, through a vsockd with its default
// --workers and through one with --workers 1; against 1, 2 and 4 raw AF_UNIX pairs
// (a thread here writing, a child process reading), measured in the same rounds. Aggregate
// = all bytes / (last receiver's EOF - start), each receiver a child process reporting
// its first-byte-to-EOF time and its EOF instant (CLOCK_MONOTONIC, shared by processes).
//
// Part 3, isolation (scale_isolation.cc): a victim VM's guest -> host throughput alone and
// while a hostile VM in the same vsockd attacks (past its budget, never-reading host
// service, a connect storm), with raw AF_UNIX in the same rounds.
// The machine is shared and noisy: read ratios and ranges; nothing here asserts speed.
// Processes: this one runs the guests (and the raw sources); vsockd, the holders and the
// sinks are children (`vsockd_scale_bench --role ...`).
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "base/log.h"
#include "base/run_main.h"
#include "base/unix_socket.h"
#include "bench/bench_common.h"
#include "bench/scale_rig.h"
#include "tests/integration/harness.h"
#include "vguest/guest.h"

namespace vsockd::bench {

using namespace std::chrono_literals;

struct Options {
  int vms = 64;
  int conns_per_vm = 1000;
  int guest_threads = 4;
  int connect_window = 32;  // guest -> host connects in flight per guest
  int h2g_sample = 1000;    // host -> guest connections in the sample
  uint64_t bytes_per_vm = 1ull << 30;
  int rounds = 5;
  bool quick = false;
  bool skip_scale = false;
  bool skip_throughput = false;
  bool skip_isolation = false;
  std::string json_path = "bench-scale-results.json";
};

constexpr uint32_t kIdlePort = 1024;  // guest -> host: <uds-path>_1024
constexpr uint32_t kH2gPort = 7000;   // host -> guest: every guest listens here

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
int64_t MonotonicNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// ---- /proc figures of the daemon ----

long ProcField(const std::string& file, const std::string& key) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::strtol(line.c_str() + key.size(), nullptr, 10);
  }
  return -1;
}

long CountFds(pid_t pid) {
  std::error_code ec;
  long n = 0;
  for (auto it = std::filesystem::directory_iterator(fmt::format("/proc/{}/fd", pid), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return ec ? -1 : n;
}

MemSnapshot Snapshot(pid_t pid) {
  MemSnapshot m;
  std::string status = fmt::format("/proc/{}/status", pid);
  m.rss_kb = ProcField(status, "VmRSS:");
  m.anon_kb = ProcField(status, "RssAnon:");
  m.shmem_kb = ProcField(status, "RssShmem:");
  std::string rollup = fmt::format("/proc/{}/smaps_rollup", pid);
  m.pss_kb = ProcField(rollup, "Pss:");
  m.pss_anon_kb = ProcField(rollup, "Pss_Anon:");
  m.fds = CountFds(pid);
  return m;
}

long SoftNofile(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/limits", pid));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Max open files", 0) == 0) {
      return std::strtol(line.c_str() + std::strlen("Max open files"), nullptr, 10);
    }
  }
  return -1;
}

// Raises our RLIMIT_NOFILE (children, vsockd among them, inherit it): the soft limit to the
// hard one, and the hard one to `want` if it is lower and we may (CAP_SYS_RESOURCE).
std::string RaiseNofile(rlim_t want) {
  struct rlimit rl;
  ::getrlimit(RLIMIT_NOFILE, &rl);
  const rlimit before = rl;
  if (rl.rlim_max < want) {
    struct rlimit up = {want, want};
    if (::setrlimit(RLIMIT_NOFILE, &up) == 0) rl = up;
  }
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);
  ::getrlimit(RLIMIT_NOFILE, &rl);
  return fmt::format("RLIMIT_NOFILE soft/hard {}/{} -> {}/{} (wanted {})", before.rlim_cur,
                     before.rlim_max, rl.rlim_cur, rl.rlim_max, want);
}

// ---- child-process roles ----

volatile sig_atomic_t g_stop = 0;
void OnStop(int) { g_stop = 1; }

// The child dies with us (a crashed benchmark leaves nothing behind), stops on SIGTERM.
void RoleSetup() {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  struct sigaction sa = {};
  sa.sa_handler = OnStop;  // no SA_RESTART: epoll_wait returns EINTR
  ::sigaction(SIGTERM, &sa, nullptr);
  struct rlimit rl;
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);
}

// holder: listens on every path listed in the file `list` (one a line), accepts and keeps
// every connection; prints "ready" once listening, "accepted N failed M" when stopped.
int RunHolder(const std::string& list) {
  RoleSetup();
  std::ifstream in(list);
  std::string path;
  std::vector<Fd> listeners;
  Fd ep(::epoll_create1(EPOLL_CLOEXEC));
  while (std::getline(in, path)) {
    auto l = ListenUnix(path, 4096, /*nonblocking=*/true);
    if (!l.ok()) {
      std::fprintf(stderr, "holder: %s\n", l.error().ToString().c_str());
      return 1;
    }
    epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.u32 = static_cast<uint32_t>(listeners.size());
    ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, l->get(), &ev);
    listeners.push_back(std::move(*l));
  }
  std::printf("ready\n");
  std::fflush(stdout);
  std::vector<Fd> held;
  held.reserve(70000);
  uint64_t failed = 0;
  epoll_event evs[64];
  while (!g_stop) {
    int n = ::epoll_wait(ep.get(), evs, 64, 1000);
    for (int i = 0; i < n; ++i) {
      int lfd = listeners[evs[i].data.u32].get();
      while (true) {
        int c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c >= 0) {
          held.emplace_back(c);
          continue;
        }
        if (errno == EMFILE || errno == ENFILE) {
          ++failed;  // out of fds: the connection waits in the backlog; count it and back off
          ::usleep(1000);
        }
        break;
      }
    }
  }
  std::printf("accepted %zu failed %lu\n", held.size(), static_cast<unsigned long>(failed));
  return 0;
}

// sink: serves `target` (listen) or connects to it (connect), reads one stream to EOF;
// prints "bytes seconds eof_ns".
int RunSink(const std::string& target, bool listen) {
  RoleSetup();
  Fd conn;
  if (listen) {
    auto l = ListenUnix(target, 16, /*nonblocking=*/false);
    if (!l.ok()) {
      std::fprintf(stderr, "sink: %s\n", l.error().ToString().c_str());
      return 1;
    }
    conn.Reset(::accept4(l->get(), nullptr, nullptr, SOCK_CLOEXEC));
  } else {
    auto c = ConnectUnix(target);
    if (c.ok()) conn = std::move(*c);
  }
  if (!conn) {
    std::fprintf(stderr, "sink: no connection on %s\n", target.c_str());
    return 1;
  }
  auto r = SinkUntilEof(conn.get());
  if (!r.ok()) {
    std::fprintf(stderr, "sink: %s\n", r.error().ToString().c_str());
    return 1;
  }
  std::printf("%lu %.9f %ld\n", static_cast<unsigned long>(r->bytes), r->seconds,
              static_cast<long>(MonotonicNs()));
  return 0;
}

// Reads the child's first line ("ready"), waiting up to `timeout`.
Status WaitReady(Child& child, std::chrono::milliseconds timeout) {
  std::string line;
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    pollfd p = {child.out.get(), POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char c;
    if (::read(child.out.get(), &c, 1) != 1) break;
    if (c == '\n') return line == "ready" ? OkStatus() : MakeError(EIO, "child said '{}'", line);
    line.push_back(c);
  }
  return MakeError(ETIMEDOUT, "child not ready (got '{}')", line);
}

struct SinkResult {
  ThroughputResult r;
  int64_t eof_ns = 0;
};
Result<SinkResult> ParseSink(const std::string& out, uint64_t expect) {
  SinkResult s;
  long eof = 0;
  if (std::sscanf(out.c_str(), "%lu %lf %ld", &s.r.bytes, &s.r.seconds, &eof) != 3 ||
      s.r.bytes != expect) {
    return MakeError(EIO, "sink reported '{}' (expected {} bytes)", out, expect);
  }
  s.eof_ns = eof;
  return s;
}

// ---- part 1: scale ----

struct ConnectOutcome {
  uint64_t ok = 0, failed = 0;
  double seconds = 0;
  std::string first_error;
  double rate() const { return seconds > 0 ? ok / seconds : 0; }
};

// The guests `vms` each open `per_vm` guest -> host connections to port kIdlePort, keeping
// `window` in flight, and keep them open. Returns when all completed or failed.
ConnectOutcome OpenIdle(MultiVm& m, const std::vector<int>& vms, int per_vm, int window) {
  struct PerGuest {
    int started = 0, finished = 0;
    std::function<void()> next;
  };
  auto state = std::make_shared<std::vector<PerGuest>>(vms.size());
  std::atomic<uint64_t> ok{0}, failed{0};
  std::atomic<size_t> guests_left{vms.size()};
  std::promise<void> all_done;
  std::mutex err_mu;
  std::string first_error;
  auto t0 = Clock::now();
  for (size_t k = 0; k < vms.size(); ++k) {
    const int i = vms[k];
    PerGuest* pg = &(*state)[k];
    pg->next = [&, i, pg] {
      ++pg->started;
      m.guest(i)->Connect(kIdlePort, [&, pg](vguest::Stream*, const Status& st) {
        if (st.ok()) {
          ++ok;
        } else if (failed++ == 0) {
          std::lock_guard lock(err_mu);
          first_error = st.error().ToString();
        }
        ++pg->finished;
        if (pg->started < per_vm) pg->next();
        if (pg->finished == per_vm && --guests_left == 0) all_done.set_value();
      });
    };
    m.Loop(i).loop()->Post([pg, per_vm, window] {
      for (int w = 0; w < std::min(window, per_vm); ++w) pg->next();
    });
  }
  if (vms.empty() || per_vm == 0) all_done.set_value();
  all_done.get_future().wait();
  ConnectOutcome out;
  out.seconds = Since(t0);
  out.ok = ok;
  out.failed = failed;
  out.first_error = first_error;
  // The `next` closures refer to this frame: drop them on their threads before returning.
  for (size_t k = 0; k < vms.size(); ++k) {
    m.Loop(vms[k]).Call([&] {
      (*state)[k].next = nullptr;
      return 0;
    });
  }
  return out;
}

// testing::HybridConnect, but a vsockd that cannot accept (out of fds) fails it after
// `timeout` instead of leaving it waiting for the "OK" line forever.
Result<Fd> HybridConnectWithin(const std::string& uds_path, uint32_t port,
                               std::chrono::milliseconds timeout) {
  auto fd = ConnectUnix(uds_path);
  if (!fd.ok()) return fd.take_error();
  timeval tv = {static_cast<time_t>(timeout.count() / 1000),
                static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
  ::setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd->get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  std::string cmd = fmt::format("CONNECT {}\n", port);
  VSOCKD_RETURN_IF_ERROR(WriteAll(fd->get(), cmd.data(), cmd.size()));
  auto line = testing::ReadLine(fd->get());
  if (!line.ok()) return line.take_error();
  if (line->rfind("OK ", 0) != 0) return MakeError(ECONNREFUSED, "reply '{}'", *line);
  return std::move(*fd);
}

// Host -> guest: `clients` threads each make hybrid connects (CONNECT kH2gPort) to VMs
// `first`, `first + clients`, ... (mod `span`) until `total` are made; the fds are kept open
// in `held` (host ends) and the guests keep theirs.
ConnectOutcome HostToGuestSample(MultiVm& m, int total, int clients, int span,
                                 std::vector<Fd>* held) {
  std::atomic<int> next{0};
  std::atomic<uint64_t> ok{0}, failed{0};
  std::mutex mu;
  std::string first_error;
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(clients));
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&] {
      int k;
      while ((k = next++) < total) {
        auto fd = HybridConnectWithin(m.Uds(k % span), kH2gPort, 5s);
        std::lock_guard lock(mu);
        if (fd.ok()) {
          ++ok;
          held->push_back(std::move(*fd));
        } else if (failed++ == 0) {
          first_error = fd.error().ToString();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  ConnectOutcome out;
  out.seconds = Since(t0);
  out.ok = ok;
  out.failed = failed;
  out.first_error = first_error;
  return out;
}

struct ScaleResult {
  int vms = 0, conns_per_vm = 0, holders = 0;
  int requested_conns_per_vm = 0;
  std::string limits, capped_note;  // capped_note: why conns_per_vm < requested
  long vsockd_nofile = -1;
  MemSnapshot one_vm_daemon;  // a vsockd configured with 1 VM, none attached
  MemSnapshot before, attached, loaded;
  double attach_seconds = 0;
  ConnectOutcome one_vm, rest, h2g_one, h2g_all;
  uint64_t held_by_holders = 0;
  double raw_conn_rate = 0;  // raw AF_UNIX connections/s, measured in the same run
};

ScaleResult RunScale(const Options& o) {
  ScaleResult s;
  // The baseline for the set-up rates: raw AF_UNIX between two processes, same run.
  if (auto raw = RawUnixConnectRate(2.0); raw.ok()) s.raw_conn_rate = *raw;
  s.vms = o.vms;
  s.conns_per_vm = s.requested_conns_per_vm = o.conns_per_vm;
  uint64_t total = static_cast<uint64_t>(o.vms) * o.conns_per_vm;
  // vsockd: one host socket per connection, ~a dozen fds per VM, the h2g sample, slack.
  s.limits = RaiseNofile(static_cast<rlim_t>(total + 16ull * o.vms + o.h2g_sample + 1024));
  std::fprintf(stderr, "%s\n", s.limits.c_str());
  struct rlimit rl;
  ::getrlimit(RLIMIT_NOFILE, &rl);

  {
    // The same vsockd with one VM: what each configured VM costs before anything attaches.
    MultiVm one;
    Must(one.Start(1, {}), "start vsockd with one VM");
    std::this_thread::sleep_for(200ms);
    s.one_vm_daemon = Snapshot(one.pid());
  }
  MultiVm m;
  Must(m.Start(o.vms, {}), "start vsockd with many VMs");
  s.vsockd_nofile = SoftNofile(m.pid());
  // vsockd holds one host socket per connection (and one per accepted hybrid connection)
  // plus ~7 fds per VM: what does not fit in its limit would only fail, so the run is cut
  // down to what fits, and says so.
  const int64_t budget = s.vsockd_nofile - 64 - 16ll * o.vms - o.h2g_sample;
  if (s.vsockd_nofile >= 0 && static_cast<int64_t>(total) > budget) {
    s.conns_per_vm = static_cast<int>(std::max<int64_t>(0, budget / o.vms));
    s.capped_note = fmt::format(
        "vsockd's open-file limit is {}: {} VMs x {} connections need about {} fds (one per "
        "connection, ~7 per VM); raise the hard limit (ulimit -Hn / LimitNOFILE=, raising it "
        "needs CAP_SYS_RESOURCE). This run opens {} per VM instead.",
        s.vsockd_nofile, o.vms, o.conns_per_vm, total + 16ull * o.vms + o.h2g_sample + 64,
        s.conns_per_vm);
    std::fprintf(stderr, "warning: %s\n", s.capped_note.c_str());
    total = static_cast<uint64_t>(o.vms) * s.conns_per_vm;
  }

  // Holders: enough processes that none needs more fds than our limit allows.
  const uint64_t per_holder_max = rl.rlim_cur > 2048 ? rl.rlim_cur - 1024 : 1024;
  s.holders = static_cast<int>(
      std::clamp<uint64_t>((total + per_holder_max - 1) / per_holder_max, 2, o.vms));
  std::vector<Child> holders;
  for (int h = 0; h < s.holders; ++h) {
    std::string list = m.dir().File(fmt::format("holder{}.list", h));
    std::ofstream f(list);
    for (int i = h; i < o.vms; i += s.holders) f << m.Uds(i) << "_" << kIdlePort << "\n";
    f.close();
    holders.push_back(Must(SpawnRoleChild("holder", list, 0, 0, 0), "spawn holder"));
    Must(WaitReady(holders.back(), 10s), "holder ready");
  }

  std::this_thread::sleep_for(200ms);
  s.before = Snapshot(m.pid());
  auto t0 = Clock::now();
  // 8 MiB of guest RAM is enough for 128-entry rings and vguest's 64 KiB tx slots.
  Must(m.AttachAll(o.guest_threads, 8u << 20), "attach the guests");
  s.attach_seconds = Since(t0);
  std::this_thread::sleep_for(200ms);
  s.attached = Snapshot(m.pid());

  std::fprintf(stderr, "%d VMs attached in %.2f s; opening %lu idle connections\n", o.vms,
               s.attach_seconds, static_cast<unsigned long>(total));
  s.one_vm = OpenIdle(m, {0}, s.conns_per_vm, o.connect_window);
  std::vector<int> rest;
  for (int i = 1; i < o.vms; ++i) rest.push_back(i);
  s.rest = OpenIdle(m, rest, s.conns_per_vm, o.connect_window);
  std::this_thread::sleep_for(500ms);
  s.loaded = Snapshot(m.pid());

  // Host -> guest sample, with the idle connections in place.
  for (int i = 0; i < o.vms; ++i) {
    Must(m.Loop(i).Call([&] { return m.guest(i)->Listen(kH2gPort, [](vguest::Stream*) {}); }),
         "guest listen");
  }
  std::vector<Fd> h2g_fds;
  h2g_fds.reserve(o.h2g_sample * 2);
  s.h2g_one = HostToGuestSample(m, std::max(1, o.h2g_sample / 4), 1, 1, &h2g_fds);
  s.h2g_all = HostToGuestSample(m, o.h2g_sample, 4, o.vms, &h2g_fds);
  h2g_fds.clear();

  m.Detach();
  int status = m.StopDaemon();
  if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
    std::fprintf(stderr, "warning: vsockd did not exit cleanly (status %d); log:\n%s\n", status,
                 m.Log().c_str());
  }
  for (auto& h : holders) {
    ::kill(h.pid, SIGTERM);
    auto out = FinishRole(h);
    unsigned long accepted = 0, failed = 0;
    if (out.ok() && std::sscanf(out->c_str(), "accepted %lu failed %lu", &accepted, &failed) >= 1) {
      s.held_by_holders += accepted;
    } else {
      std::fprintf(stderr, "holder: %s\n",
                   out.ok() ? out->c_str() : out.error().ToString().c_str());
    }
  }
  return s;
}

// ---- part 2: aggregate throughput ----

// n parallel raw AF_UNIX pairs: a writer thread here, a sink child each.
Result<Agg> RawParallel(int n, uint64_t bytes) {
  TempDir dir;
  std::vector<Fd> listeners, conns;
  std::vector<Child> sinks;
  for (int i = 0; i < n; ++i) {
    std::string path = dir.File(fmt::format("raw{}", i));
    auto l = ListenUnix(path, 16, /*nonblocking=*/false);
    if (!l.ok()) return l.take_error();
    listeners.push_back(std::move(*l));
    auto c = SpawnRoleChild("connect-sink", path, 0, bytes, 0);
    if (!c.ok()) return c.take_error();
    sinks.push_back(std::move(*c));
    Fd conn(::accept4(listeners.back().get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) return ErrnoError("accept");
    conns.push_back(std::move(conn));
  }
  const int64_t t0 = MonotonicNs();
  std::vector<std::thread> writers;
  writers.reserve(static_cast<size_t>(n));
  std::vector<Status> sts(n, OkStatus());
  for (int i = 0; i < n; ++i) {
    writers.emplace_back([&, i] {
      sts[i] = SourceBytes(conns[i].get(), bytes, kWriteSize);
      conns[i].Reset();
    });
  }
  for (auto& w : writers) w.join();
  Agg a;
  int64_t last = t0;
  for (int i = 0; i < n; ++i) {
    auto out = FinishRole(sinks[i]);
    if (!sts[i].ok()) return sts[i].take_error();
    if (!out.ok()) return out.take_error();
    auto s = ParseSink(*out, bytes);
    if (!s.ok()) return s.take_error();
    a.per_vm_gbps.push_back(s->r.gbps());
    last = std::max(last, s->eof_ns);
  }
  a.total_gbps = last > t0 ? n * bytes * 8.0 / ((last - t0) / 1e9) / 1e9 : 0;
  return a;
}

// n of the rig's guests each send `bytes` to a host sink at once.
Result<Agg> GuestsParallel(MultiVm& m, int n, uint64_t bytes, uint32_t port) {
  std::vector<Child> sinks;
  for (int i = 0; i < n; ++i) {
    std::string target = fmt::format("{}_{}", m.Uds(i), port);
    auto c = SpawnRoleChild("listen-sink", target, 0, bytes, 0);
    if (!c.ok()) return c.take_error();
    sinks.push_back(std::move(*c));
    if (!WaitForListener(target)) return MakeError(ETIMEDOUT, "sink on {} did not start", target);
  }
  struct Sender {
    std::vector<uint8_t> buf = std::vector<uint8_t>(kWriteSize, 0x5a);
    uint64_t offset = 0;
    vguest::Stream* stream = nullptr;
    std::function<void()> pump;
    bool done = false;  // on_writable may fire again after the last write
    std::promise<Status> sent;
  };
  std::vector<std::unique_ptr<Sender>> senders;
  senders.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) senders.push_back(std::make_unique<Sender>());
  const int64_t t0 = MonotonicNs();
  for (int i = 0; i < n; ++i) {
    Sender* s = senders[i].get();
    s->pump = [s, bytes] {
      if (s->done) return;
      while (s->offset < bytes) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(kWriteSize, bytes - s->offset));
        size_t w = s->stream->Write(s->buf.data(), want);
        s->offset += w;
        if (w < want) return;
      }
      s->stream->Shutdown(false, true);
      s->done = true;
      s->sent.set_value(OkStatus());
    };
    m.Loop(i).loop()->Post([&m, i, s, port] {
      m.guest(i)->Connect(port, [s](vguest::Stream* st, const Status& status) {
        if (!status.ok()) {
          s->sent.set_value(status);
          return;
        }
        s->stream = st;
        st->on_writable = [s] { s->pump(); };
        s->pump();
      });
    });
  }
  Status first = OkStatus();
  for (auto& s : senders) {
    Status st = s->sent.get_future().get();
    if (!st.ok() && first.ok()) first = st;
  }
  Agg a;
  int64_t last = t0;
  Status parse = OkStatus();
  for (int i = 0; i < n; ++i) {
    if (!first.ok()) {
      StopRole(sinks[i]);
      continue;
    }
    auto out = FinishRole(sinks[i]);
    if (!out.ok()) {
      if (parse.ok()) parse = out.take_error();
      continue;
    }
    auto s = ParseSink(*out, bytes);
    if (!s.ok()) {
      if (parse.ok()) parse = s.take_error();
      continue;
    }
    a.per_vm_gbps.push_back(s->r.gbps());
    last = std::max(last, s->eof_ns);
  }
  for (int i = 0; i < n; ++i) {
    m.Loop(i).Call([&] {
      if (senders[i]->stream != nullptr) senders[i]->stream->Close();
      return 0;
    });
  }
  if (!first.ok()) return first.take_error();
  if (!parse.ok()) return parse.take_error();
  a.total_gbps = last > t0 ? n * bytes * 8.0 / ((last - t0) / 1e9) / 1e9 : 0;
  return a;
}

constexpr int kBusy[] = {1, 2, 4};

struct TputRow {
  int n = 0;
  std::vector<double> raw, dflt, one;                         // aggregate Gbit/s per round
  std::vector<double> dflt_per_vm, one_per_vm, raw_per_pair;  // every stream of every round
};

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double Min(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::min_element(v.begin(), v.end());
}
double Max(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::max_element(v.begin(), v.end());
}

std::vector<TputRow> RunThroughput(const Options& o, long* default_workers) {
  MultiVm dflt, one;
  Must(dflt.Start(4, {}), "start vsockd (default workers)");
  Must(one.Start(4, {"--workers", "1"}), "start vsockd --workers 1");
  Must(dflt.AttachAll(4, 64u << 20), "attach guests (default workers)");
  Must(one.AttachAll(4, 64u << 20), "attach guests (--workers 1)");
  // vsockd's threads: main + workers (default: one per core, at most one per VM).
  *default_workers = ProcField(fmt::format("/proc/{}/status", dflt.pid()), "Threads:") - 1;
  std::vector<TputRow> rows;
  for (int n : kBusy) rows.push_back(TputRow{n});
  uint32_t port = 30000;
  // Warm-up, not counted: the first transfers fault in guest RAM, vsockd's buffers and the
  // sinks' pages, which otherwise lands on whichever rig happens to run first.
  const uint64_t warm = std::min<uint64_t>(o.bytes_per_vm, 64ull << 20);
  Must(RawParallel(4, warm), "warm-up raw");
  Must(GuestsParallel(dflt, 4, warm, port++), "warm-up, default workers");
  Must(GuestsParallel(one, 4, warm, port++), "warm-up, --workers 1");
  for (int round = 0; round < o.rounds; ++round) {
    std::fprintf(stderr, "throughput round %d/%d\n", round + 1, o.rounds);
    for (auto& row : rows) {
      auto raw = Must(RawParallel(row.n, o.bytes_per_vm), "raw AF_UNIX pairs");
      auto d = Must(GuestsParallel(dflt, row.n, o.bytes_per_vm, port++), "guests, default workers");
      auto w = Must(GuestsParallel(one, row.n, o.bytes_per_vm, port++), "guests, --workers 1");
      row.raw.push_back(raw.total_gbps);
      row.dflt.push_back(d.total_gbps);
      row.one.push_back(w.total_gbps);
      row.raw_per_pair.insert(row.raw_per_pair.end(), raw.per_vm_gbps.begin(),
                              raw.per_vm_gbps.end());
      row.dflt_per_vm.insert(row.dflt_per_vm.end(), d.per_vm_gbps.begin(), d.per_vm_gbps.end());
      row.one_per_vm.insert(row.one_per_vm.end(), w.per_vm_gbps.begin(), w.per_vm_gbps.end());
    }
  }
  return rows;
}

// ---- report ----

double PerUnit(long after, long before, uint64_t units) {
  return (after >= 0 && before >= 0 && units > 0) ? double(after - before) / units : -1;
}

std::string Json(double v) { return v < 0 ? "null" : fmt::format("{:.3f}", v); }
std::string JsonList(const std::vector<double>& v) {
  std::vector<std::string> s;
  s.reserve(v.size());
  for (double d : v) s.push_back(fmt::format("{:.4f}", d));
  return "[" + fmt::format("{}", fmt::join(s, ", ")) + "]";
}
std::string MemJson(const MemSnapshot& m) {
  return fmt::format(
      "{{\"vm_rss_kib\": {}, \"rss_anon_kib\": {}, \"rss_shmem_kib\": {}, \"pss_kib\": {}, "
      "\"pss_anon_kib\": {}, \"fds\": {}}}",
      m.rss_kb, m.anon_kb, m.shmem_kb, m.pss_kb < 0 ? "null" : std::to_string(m.pss_kb),
      m.pss_anon_kb < 0 ? "null" : std::to_string(m.pss_anon_kb), m.fds);
}
std::string ConnJson(const ConnectOutcome& c) {
  return fmt::format("{{\"ok\": {}, \"failed\": {}, \"seconds\": {:.4f}, \"per_second\": {:.1f}}}",
                     c.ok, c.failed, c.seconds, c.rate());
}

std::string ReportScale(const ScaleResult& s) {
  const uint64_t total = static_cast<uint64_t>(s.vms) * s.conns_per_vm;
  const uint64_t opened = s.one_vm.ok + s.rest.ok;
  std::printf(
      "\nScale: one vsockd, %d VMs (virtual guests), %d idle guest->host connections per "
      "VM\n(%s; vsockd's soft limit %ld; %d holder processes held %lu host ends)\n\n",
      s.vms, s.conns_per_vm, s.limits.c_str(), s.vsockd_nofile, s.holders,
      static_cast<unsigned long>(s.held_by_holders));
  std::printf("| %-34s | %10s | %10s | %10s | %10s | %8s |\n", "vsockd", "VmRSS KiB", "Anon KiB",
              "Shmem KiB", "Pss KiB", "fds");
  std::printf("|%s|%s|%s|%s|%s|%s|\n", std::string(36, '-').c_str(), std::string(12, '-').c_str(),
              std::string(12, '-').c_str(), std::string(12, '-').c_str(),
              std::string(12, '-').c_str(), std::string(10, '-').c_str());
  auto row = [](const std::string& name, const MemSnapshot& m) {
    std::printf("| %-34s | %10ld | %10ld | %10ld | %10s | %8ld |\n", name.c_str(), m.rss_kb,
                m.anon_kb, m.shmem_kb, m.pss_kb < 0 ? "n/a" : std::to_string(m.pss_kb).c_str(),
                m.fds);
  };
  row("1 VM configured, not attached", s.one_vm_daemon);
  row(fmt::format("{} VMs configured, none attached", s.vms), s.before);
  row(fmt::format("{} VMs attached, idle", s.vms), s.attached);
  row(fmt::format("+ {} idle connections", opened), s.loaded);
  // Per VM: configured (64 vs 1 VM, nothing attached) + attached (the vhost-user session).
  double cfg_rss = PerUnit(s.before.rss_kb, s.one_vm_daemon.rss_kb, s.vms - 1);
  double cfg_anon = PerUnit(s.before.anon_kb, s.one_vm_daemon.anon_kb, s.vms - 1);
  double cfg_fds = PerUnit(s.before.fds, s.one_vm_daemon.fds, s.vms - 1);
  double vm_rss = PerUnit(s.attached.rss_kb, s.before.rss_kb, s.vms);
  double vm_anon = PerUnit(s.attached.anon_kb, s.before.anon_kb, s.vms);
  double vm_pss = PerUnit(s.attached.pss_kb, s.before.pss_kb, s.vms);
  double c_rss = PerUnit(s.loaded.rss_kb, s.attached.rss_kb, opened);
  double c_anon = PerUnit(s.loaded.anon_kb, s.attached.anon_kb, opened);
  double c_pss = PerUnit(s.loaded.pss_kb, s.attached.pss_kb, opened);
  double c_fds = PerUnit(s.loaded.fds, s.attached.fds, opened);
  // RssShmem is guest RAM (the memfd shared with vsockd) that vsockd has written: the rx
  // buffers it filled, at most a ring's worth per VM, however many connections. So it is
  // reported per VM, and the per-connection figure is vsockd's own memory (RSS - Shmem).
  double own_c =
      PerUnit(s.loaded.rss_kb - s.loaded.shmem_kb, s.attached.rss_kb - s.attached.shmem_kb, opened);
  double guest_ram_vm = PerUnit(s.loaded.shmem_kb, 0, s.vms);
  std::printf(
      "\nper VM configured (%d VMs vs 1, none attached): %.1f KiB RSS (%.1f KiB anon), "
      "%.1f fds\n",
      s.vms, cfg_rss, cfg_anon, cfg_fds);
  std::printf(
      "per VM attached: %.1f KiB RSS (%.1f KiB anon, %s KiB PSS), %.1f fds;\n"
      "        + %.1f KiB of guest RAM (RssShmem) touched once traffic fills the rx ring\n",
      vm_rss, vm_anon, vm_pss < 0 ? "n/a" : fmt::format("{:.1f}", vm_pss).c_str(),
      PerUnit(s.attached.fds, s.before.fds, s.vms), guest_ram_vm);
  std::printf(
      "per idle connection: %.2f KiB of vsockd's own memory (RSS - Shmem; %.2f KiB "
      "anon),\n        %.2f fds (kernel socket memory is not in any RSS)\n",
      own_c, c_anon, c_fds);
  std::printf("(all-in deltas over the connections: %.2f KiB RSS, %s KiB PSS per connection)\n",
              c_rss, c_pss < 0 ? "n/a" : fmt::format("{:.2f}", c_pss).c_str());
  std::printf("attach: %d guests in %.2f s\n", s.vms, s.attach_seconds);
  std::printf("raw AF_UNIX (connect, 1-byte answer, close), same run: %9.0f conn/s\n",
              s.raw_conn_rate);
  auto conn_line = [&s](const char* what, const ConnectOutcome& c) {
    std::printf("%-46s %9.0f conn/s  %5.2fx raw  (%lu in %.2f s%s%s)\n", what, c.rate(),
                s.raw_conn_rate > 0 ? c.rate() / s.raw_conn_rate : 0.0,
                static_cast<unsigned long>(c.ok), c.seconds,
                c.failed ? fmt::format(", {} FAILED", c.failed).c_str() : "",
                c.failed ? (": " + c.first_error).c_str() : "");
  };
  conn_line("guest->host set-up, VM 0 alone:", s.one_vm);
  conn_line(fmt::format("guest->host set-up, {} VMs at once:", s.vms - 1).c_str(), s.rest);
  conn_line("host->guest (hybrid CONNECT), 1 client, 1 VM:", s.h2g_one);
  conn_line("host->guest (hybrid CONNECT), 4 clients, all VMs:", s.h2g_all);
  if (opened != total) std::printf("NOTE: %lu of %lu connections opened\n", opened, total);
  if (!s.capped_note.empty()) std::printf("NOTE: %s\n", s.capped_note.c_str());

  return fmt::format(
      "  \"scale\": {{\n    \"vms\": {}, \"conns_per_vm\": {}, \"requested_conns_per_vm\": {}, "
      "\"capped_note\": \"{}\", \"connections_opened\": {}, "
      "\"connections_failed\": {},\n    \"limits\": \"{}\", \"vsockd_soft_nofile\": {}, "
      "\"holders\": {}, \"held_by_holders\": {},\n"
      "    \"memory\": {{\"one_vm_configured\": {},\n      \"before_attach\": {},\n      "
      "\"attached_idle\": {},\n      "
      "\"with_connections\": {}}},\n"
      "    \"per_vm_configured\": {{\"rss_kib\": {}, \"anon_kib\": {}, \"fds\": {}}},\n"
      "    \"per_vm_attached_kib\": {{\"rss\": {}, \"anon\": {}, \"pss\": {}, "
      "\"guest_ram_touched\": {}}},\n"
      "    \"per_connection_kib\": {{\"own_rss_minus_shmem\": {}, \"rss\": {}, \"anon\": {}, "
      "\"pss\": {}, \"fds\": {}}},\n"
      "    \"attach_seconds\": {:.3f},\n"
      "    \"g2h_setup_one_vm\": {},\n    \"g2h_setup_other_vms_at_once\": {},\n"
      "    \"h2g_setup_one_client_one_vm\": {},\n    \"h2g_setup_four_clients_all_vms\": {},\n"
      "    \"raw_af_unix_conn_per_s\": {}\n  }}",
      s.vms, s.conns_per_vm, s.requested_conns_per_vm, s.capped_note, opened,
      s.one_vm.failed + s.rest.failed, s.limits, s.vsockd_nofile, s.holders, s.held_by_holders,
      MemJson(s.one_vm_daemon), MemJson(s.before), MemJson(s.attached), MemJson(s.loaded),
      Json(cfg_rss), Json(cfg_anon), Json(cfg_fds), Json(vm_rss), Json(vm_anon), Json(vm_pss),
      Json(guest_ram_vm), Json(own_c), Json(c_rss), Json(c_anon), Json(c_pss), Json(c_fds),
      s.attach_seconds, ConnJson(s.one_vm), ConnJson(s.rest), ConnJson(s.h2g_one),
      ConnJson(s.h2g_all), Json(s.raw_conn_rate));
}

std::string ReportThroughput(const Options& o, const std::vector<TputRow>& rows,
                             long default_workers) {
  std::printf(
      "\nAggregate throughput, guest->host, one stream per busy VM, 64 KiB writes, %lu MiB per "
      "VM;\nmedian of %d rounds [min-max]; vsockd default workers = %ld on %u cores\n\n",
      static_cast<unsigned long>(o.bytes_per_vm >> 20), o.rounds, default_workers,
      std::thread::hardware_concurrency());
  std::printf("| %-4s | %-21s | %-19s | %-21s | %-7s | %-21s | %-8s |\n", "VMs",
              "vsockd Gb/s total", "per VM Gb/s", "raw AF_UNIX Gb/s", "ratio", "--workers 1 Gb/s",
              "dflt/w1");
  std::printf(
      "|------|-----------------------|---------------------|-----------------------|---------|"
      "-----------------------|----------|\n");
  std::string json = fmt::format(
      "  \"throughput\": {{\n    \"bytes_per_vm\": {}, \"write_size\": {}, \"rounds\": {}, "
      "\"default_workers\": {}, \"cores\": {},\n    \"rows\": [\n",
      o.bytes_per_vm, kWriteSize, o.rounds, default_workers, std::thread::hardware_concurrency());
  for (size_t i = 0; i < rows.size(); ++i) {
    const TputRow& r = rows[i];
    double d = Median(r.dflt), raw = Median(r.raw), w1 = Median(r.one);
    std::printf(
        "| %-4d | %7.2f [%5.2f-%5.2f] | %5.2f [%5.2f-%5.2f] | %7.2f [%5.2f-%5.2f] | "
        "%6.2fx | %7.2f [%5.2f-%5.2f] | %7.2fx |\n",
        r.n, d, Min(r.dflt), Max(r.dflt), d / r.n, Min(r.dflt_per_vm), Max(r.dflt_per_vm), raw,
        Min(r.raw), Max(r.raw), raw > 0 ? d / raw : 0, w1, Min(r.one), Max(r.one),
        w1 > 0 ? d / w1 : 0);
    json += fmt::format(
        "      {{\"busy_vms\": {}, \"vsockd_gbps\": {:.4f}, \"vsockd_per_vm_gbps\": {:.4f}, "
        "\"raw_af_unix_gbps\": {:.4f}, \"ratio_vs_raw\": {:.4f}, \"workers1_gbps\": {:.4f}, "
        "\"ratio_default_vs_workers1\": {:.4f},\n       \"vsockd_runs\": {}, \"raw_runs\": {}, "
        "\"workers1_runs\": {},\n       \"vsockd_stream_gbps\": {}, \"raw_stream_gbps\": {}, "
        "\"workers1_stream_gbps\": {}}}{}\n",
        r.n, d, d / r.n, raw, raw > 0 ? d / raw : 0, w1, w1 > 0 ? d / w1 : 0, JsonList(r.dflt),
        JsonList(r.raw), JsonList(r.one), JsonList(r.dflt_per_vm), JsonList(r.raw_per_pair),
        JsonList(r.one_per_vm), i + 1 < rows.size() ? "," : "");
  }
  std::printf(
      "\nper VM: total / VMs [slowest-fastest single stream, its own first-byte-to-EOF "
      "time]; ratio: vsockd / raw AF_UNIX pairs; dflt/w1: default workers / --workers 1\n");
  return json + "    ]\n  }";
}

int RunBench(const Options& o) {
  std::vector<std::string> parts;
  if (!o.skip_scale) parts.push_back(ReportScale(RunScale(o)));
  if (!o.skip_throughput) {
    long workers = 0;
    auto rows = RunThroughput(o, &workers);
    parts.push_back(ReportThroughput(o, rows, workers));
  }
  if (!o.skip_isolation) parts.push_back(RunAndReportIsolation(o.rounds, o.bytes_per_vm));
  std::string json =
      fmt::format("{{\n  \"quick\": {},\n{}\n}}\n", o.quick, fmt::join(parts, ",\n"));
  std::ofstream(o.json_path) << json;
  std::printf("\nJSON: %s\n", o.json_path.c_str());
  return 0;
}

}  // namespace vsockd::bench

int ScaleBenchMain(int argc, char** argv) {
  CLI::App app{
      "vsockd scale benchmark: many VMs and idle connections in one vsockd, and "
      "aggregate throughput of several busy VMs"};
  vsockd::bench::Options o;
  std::string role, path;
  uint32_t port = 0;
  uint64_t write_size = 0;
  app.add_option("--vms", o.vms, "VMs served by one vsockd (scale part)")
      ->check(CLI::Range(1, 4000));
  app.add_option("--conns-per-vm", o.conns_per_vm, "idle guest->host connections per VM")
      ->check(CLI::Range(0, 1000000));
  app.add_option("--guest-threads", o.guest_threads, "event-loop threads playing the guests")
      ->check(CLI::Range(1, 256));
  app.add_option("--connect-window", o.connect_window, "guest->host connects in flight per guest")
      ->check(CLI::Range(1, 100000));
  app.add_option("--h2g-sample", o.h2g_sample, "host->guest connections in the sample")
      ->check(CLI::Range(1, 100000));
  app.add_option("--bytes-per-vm", o.bytes_per_vm, "bytes each busy VM sends (throughput part)");
  app.add_option("--rounds", o.rounds, "throughput rounds; figures are medians")
      ->check(CLI::Range(1, 100));
  app.add_flag("--quick", o.quick,
               "small run: 8 VMs x 200 connections, 200 h2g, 128 MiB per VM, 1 round (flags given "
               "explicitly win)");
  app.add_flag("--no-scale", o.skip_scale, "skip the scale part");
  app.add_flag("--no-throughput", o.skip_throughput, "skip the throughput part");
  app.add_flag("--no-isolation", o.skip_isolation,
               "skip the isolation part (a victim VM's throughput while a hostile VM attacks)");
  app.add_option("--json", o.json_path, "where to write the JSON results");
  // Internal: the child-process roles.
  app.add_option("--role", role)->group("");
  app.add_option("--path", path)->group("");
  app.add_option("--port", port)->group("");
  app.add_option("--bytes", write_size)->group("");
  app.add_option("--write-size", write_size)->group("");
  CLI11_PARSE(app, argc, argv);
  if (role == "holder") return vsockd::bench::RunHolder(path);
  if (role == "listen-sink") return vsockd::bench::RunSink(path, /*listen=*/true);
  if (role == "connect-sink") return vsockd::bench::RunSink(path, /*listen=*/false);
  // bench_common's roles (the raw AF_UNIX connect-rate baseline's acceptor).
  if (role == "acceptor") return vsockd::bench::RunRole(role, path, 0, 0, 0);
  if (!role.empty()) {
    std::fprintf(stderr, "unknown role '%s'\n", role.c_str());
    return 2;
  }
  // vguest logs each attach at info level: 64 lines of noise here.
  vsockd::SetLogLevel(vsockd::LogLevel::kWarn);
  if (o.quick) {
    auto unset = [&](const char* name) { return app.get_option(name)->count() == 0; };
    if (unset("--vms")) o.vms = 8;
    if (unset("--conns-per-vm")) o.conns_per_vm = 200;
    if (unset("--h2g-sample")) o.h2g_sample = 200;
    if (unset("--bytes-per-vm")) o.bytes_per_vm = 128ull << 20;
    if (unset("--rounds")) o.rounds = 1;
  }
  return vsockd::bench::RunBench(o);
}

int main(int argc, char** argv) {
  return vsockd::RunMain("vsockd_scale_bench", ScaleBenchMain, argc, argv);
}
