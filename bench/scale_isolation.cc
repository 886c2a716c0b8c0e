// Part 3 of vsockd_scale_bench: isolation. One vsockd serves a victim VM (default budgets)
// and a hostile VM (a budget of 64 connections and 4 MiB buffered). The victim's guest ->
// host throughput, and vsockd's CPU per GiB of it, is measured in three phases: alone; while
// the hostile guest holds every connection it got (it asked for twice its budget, to a host
// service that accepts and never reads, and filled each to its credit); and while it also
// storms vsockd with connects, each retried as soon as it is refused. Raw AF_UNIX pairs are
// measured in the same rounds. Nothing here asserts: the figures are read.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <thread>

#include "bench/scale_rig.h"

namespace vsockd::bench {
namespace {

using namespace std::chrono_literals;

constexpr uint32_t kHostilePort = 6666;  // the host service that never reads
constexpr int kHostileBudget = 64;
constexpr uint64_t kHostileBuffered = 4ull << 20;

// The hostile guest's attack, run on its loop thread: fill, then storm until Stop().
class Attack {
 public:
  Attack(MultiVm* m, int vm) : m_(m), vm_(vm) {}

  // Runs f on the hostile guest's loop thread and returns what it returns.
  template <typename F>
  auto Call(F f) {
    return m_->Loop(vm_).Call([&] {
      if constexpr (std::is_void_v<decltype(f())>) {
        f();
        return 0;
      } else {
        return f();
      }
    });
  }

  // Opens `conns` connections at once; each established one is written to until its credit
  // is spent (and again whenever credit returns). Returns once every connect has finished.
  void Fill(int conns) {
    std::promise<void> done;
    auto left = std::make_shared<std::atomic<int>>(conns);
    Call([&] {
      for (int i = 0; i < conns; ++i) {
        guest()->Connect(kHostilePort, [this, left, &done](vguest::Stream* s, const Status& st) {
          if (st.ok()) {
            ++admitted_;
            s->on_writable = [this, s] { Stuff(s); };
            Stuff(s);
          } else {
            ++refused_;
            s->Close();  // a refused stream stays allocated until closed, like an fd
          }
          if (--*left == 0) done.set_value();
        });
      }
    });
    done.get_future().wait();
  }

  // Connects again as soon as each connect is refused, `window` in flight, until Stop().
  void StartStorm(int window) {
    Call([&] {
      for (int i = 0; i < window; ++i) StormOne();
    });
  }
  // Stops the storm and waits for the connects in flight to finish.
  void Stop() {
    Call([&] { stopping_ = true; });
    while (Call([&] { return in_flight_; }) > 0) std::this_thread::sleep_for(10ms);
  }

  uint64_t admitted() {
    return Call([&] { return admitted_; });
  }
  uint64_t refused() {
    return Call([&] { return refused_; });
  }
  uint64_t storm_refused() {
    return Call([&] { return storm_refused_; });
  }
  uint64_t stuffed_bytes() {
    return Call([&] { return stuffed_; });
  }

 private:
  vguest::Guest* guest() { return m_->guest(vm_); }
  void Stuff(vguest::Stream* s) {
    for (;;) {
      size_t w = s->Write(filler_.data(), filler_.size());
      stuffed_ += w;
      if (w < filler_.size()) return;
    }
  }

  void StormOne() {
    if (stopping_) return;
    ++in_flight_;
    guest()->Connect(kHostilePort, [this](vguest::Stream* s, const Status& st) {
      --in_flight_;
      // A slot freed meanwhile is given back at once: the point is the churn. A refused stream
      // stays allocated until closed (like an fd): without Close() the storm's own heap grew by
      // one stream per refusal and its page faults took the CPU the victim was measured on.
      if (!st.ok()) ++storm_refused_;
      s->Close();
      StormOne();
    });
  }

  MultiVm* m_;
  int vm_;
  std::vector<uint8_t> filler_ = std::vector<uint8_t>(kWriteSize, 0xee);
  // Loop-thread state.
  uint64_t admitted_ = 0, refused_ = 0, storm_refused_ = 0, stuffed_ = 0;
  int in_flight_ = 0;
  bool stopping_ = false;
};

double CpuOf(pid_t pid) {
  auto c = ProcessCpuSeconds(pid);
  return c.ok() ? *c : 0;
}

struct Phase {
  const char* name = "";
  std::vector<double> victim, raw;  // Gbit/s per round
  double vsockd_ms_per_gib = 0;     // vsockd's CPU over the victim's transfers, per GiB
};

Phase Measure(MultiVm& m, int rounds, uint64_t bytes, uint32_t* port, const char* what) {
  Phase phase;
  phase.name = what;
  double cpu = 0;
  for (int r = 0; r < rounds; ++r) {
    std::fprintf(stderr, "isolation: %s, round %d/%d\n", what, r + 1, rounds);
    phase.raw.push_back(Must(RawParallel(1, bytes), "raw AF_UNIX pair").total_gbps);
    const double before = CpuOf(m.pid());
    phase.victim.push_back(Must(GuestsParallel(m, 1, bytes, (*port)++), what).total_gbps);
    cpu += CpuOf(m.pid()) - before;
  }
  phase.vsockd_ms_per_gib = cpu * 1000 / (static_cast<double>(rounds) * bytes / (1ull << 30));
  return phase;
}

std::string PhaseJson(const Phase& p) {
  return fmt::format(
      "{{\"victim_gbps\": {:.4f}, \"raw_gbps\": {:.4f}, \"vsockd_cpu_ms_per_gib\": {:.1f}}}",
      Median(p.victim), Median(p.raw), p.vsockd_ms_per_gib);
}

}  // namespace

std::string RunAndReportIsolation(int rounds, uint64_t bytes) {
  MultiVm m;
  Must(m.Start(2, {},
               {"", fmt::format("    max_connections: {}\n    max_buffered_bytes: {}\n",
                                kHostileBudget, kHostileBuffered)}),
       "start vsockd with a victim and a hostile VM");
  const std::string list = m.dir().File("hostile.list");
  std::ofstream(list) << m.Uds(1) << "_" << kHostilePort << "\n";
  Child holder = Must(SpawnRoleChild("holder", list, 0, 0, 0), "spawn the never-reading service");
  Must(WaitReady(holder, 10s), "never-reading service ready");
  Must(m.AttachAll(2, 64u << 20), "attach the guests");
  uint32_t port = 40000;
  Must(GuestsParallel(m, 1, std::min<uint64_t>(bytes, 64ull << 20), port++), "warm-up");
  const MemSnapshot before = Snapshot(m.pid());

  const Phase alone = Measure(m, rounds, bytes, &port, "alone");
  Attack attack(&m, 1);
  attack.Fill(2 * kHostileBudget);
  std::this_thread::sleep_for(500ms);  // vsockd buffers what the never-reading host refuses
  const MemSnapshot filled = Snapshot(m.pid());
  const Phase held = Measure(m, rounds, bytes, &port, "hostile connections held");
  attack.StartStorm(8);
  const Phase storm = Measure(m, rounds, bytes, &port, "held + connect storm");
  const MemSnapshot during = Snapshot(m.pid());
  attack.Stop();
  StopRole(holder);

  std::printf(
      "\nIsolation: victim VM guest->host, 64 KiB writes, %lu MiB; median of %d rounds "
      "[min-max]\nhostile VM in the same vsockd: budget %d connections / %lu MiB buffered; it "
      "asks for %d connections\nto a host service that never reads and fills each to credit "
      "(held), then also storms vsockd with\nconnects, 8 in flight, each retried as soon as it "
      "is refused (storm). The hostile guest runs in this\nprocess: on 2 cores its storm takes "
      "CPU from the victim's parties too.\n\n",
      static_cast<unsigned long>(bytes >> 20), rounds, kHostileBudget,
      static_cast<unsigned long>(kHostileBuffered >> 20), 2 * kHostileBudget);
  std::printf("| %-26s | %-22s | %-8s | %-22s | %-8s | %-14s |\n", "victim", "vsockd Gb/s",
              "/ alone", "raw AF_UNIX Gb/s", "ratio", "vsockd ms/GiB");
  std::printf(
      "|----------------------------|------------------------|----------|------------------------"
      "|----------|----------------|\n");
  const double a = Median(alone.victim);
  for (const Phase* p : {&alone, &held, &storm}) {
    const double v = Median(p->victim), raw = Median(p->raw);
    std::printf(
        "| %-26s | %8.2f [%5.2f-%5.2f] | %7.2fx | %8.2f [%5.2f-%5.2f] | %7.2fx | %14.1f |\n",
        p->name, v, Min(p->victim), Max(p->victim), a > 0 ? v / a : 0, raw, Min(p->raw),
        Max(p->raw), raw > 0 ? v / raw : 0, p->vsockd_ms_per_gib);
  }
  std::printf(
      "\nhostile: %lu connections admitted, %lu refused; %lu storm connects refused; %.1f MiB "
      "written into its connections\nvsockd RssAnon: %ld KiB before, %ld KiB held, %ld KiB "
      "after the storm; fds %ld -> %ld\n",
      static_cast<unsigned long>(attack.admitted()), static_cast<unsigned long>(attack.refused()),
      static_cast<unsigned long>(attack.storm_refused()),
      static_cast<double>(attack.stuffed_bytes()) / (1 << 20), before.anon_kb, filled.anon_kb,
      during.anon_kb, before.fds, during.fds);
  return fmt::format(
      "  \"isolation\": {{\n    \"bytes\": {}, \"rounds\": {}, \"hostile_budget_connections\": {}, "
      "\"hostile_budget_buffered_bytes\": {},\n    \"alone\": {},\n    \"held\": {},\n    "
      "\"storm\": {},\n    \"victim_under_attack_gbps\": {:.4f}, \"held_over_alone\": {:.4f}, "
      "\"storm_over_alone\": {:.4f},\n    \"hostile_admitted\": {}, \"hostile_refused\": {}, "
      "\"storm_refused\": {}, \"hostile_bytes_written\": {},\n    \"rss_anon_kib\": "
      "{{\"before\": {}, \"held\": {}, \"storm\": {}}}, \"fds\": {{\"before\": {}, \"storm\": "
      "{}}}\n  }}",
      bytes, rounds, kHostileBudget, kHostileBuffered, PhaseJson(alone), PhaseJson(held),
      PhaseJson(storm), Median(held.victim), a > 0 ? Median(held.victim) / a : 0,
      a > 0 ? Median(storm.victim) / a : 0, attack.admitted(), attack.refused(),
      attack.storm_refused(), attack.stuffed_bytes(), before.anon_kb, filled.anon_kb,
      during.anon_kb, before.fds, during.fds);
}

}  // namespace vsockd::bench
