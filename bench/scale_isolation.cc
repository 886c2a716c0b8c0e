// Part 3 of vsockd_scale_bench: isolation. One vsockd serves a victim VM (default budgets)
// and a hostile VM (a budget of 64 connections and 4 MiB buffered). The victim's guest ->
// host throughput is measured alone, then while the hostile guest attacks: it asks for twice
// its connection budget to a host service that accepts and never reads, fills every
// connection it gets to its credit, and then storms vsockd with connects it keeps retrying
// (each refused with an RST) for as long as the victim is measured. Raw AF_UNIX pairs are
// measured in the same rounds for the ratio. Nothing here asserts: the figures are read.
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
      if (st.ok()) {
        s->Close();  // a slot freed meanwhile: give it back, the point is the churn
      } else {
        ++storm_refused_;
      }
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

struct Phase {
  std::vector<double> victim, raw;  // Gbit/s per round
};

void Measure(MultiVm& m, int rounds, uint64_t bytes, uint32_t* port, Phase* phase,
             const char* what) {
  for (int r = 0; r < rounds; ++r) {
    std::fprintf(stderr, "isolation: %s, round %d/%d\n", what, r + 1, rounds);
    phase->raw.push_back(Must(RawParallel(1, bytes), "raw AF_UNIX pair").total_gbps);
    phase->victim.push_back(Must(GuestsParallel(m, 1, bytes, (*port)++), what).total_gbps);
  }
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

  Phase alone, attacked;
  Measure(m, rounds, bytes, &port, &alone, "victim alone");
  Attack attack(&m, 1);
  attack.Fill(2 * kHostileBudget);
  std::this_thread::sleep_for(500ms);  // vsockd buffers what the never-reading host refuses
  const MemSnapshot filled = Snapshot(m.pid());
  attack.StartStorm(8);
  Measure(m, rounds, bytes, &port, &attacked, "victim under attack");
  const MemSnapshot during = Snapshot(m.pid());
  attack.Stop();
  StopRole(holder);

  const double a = Median(alone.victim), u = Median(attacked.victim);
  const double ra = Median(alone.raw), ru = Median(attacked.raw);
  std::printf(
      "\nIsolation: victim VM guest->host, 64 KiB writes, %lu MiB; median of %d rounds "
      "[min-max]\nhostile VM in the same vsockd: budget %d connections / %lu MiB buffered; "
      "asked for %d connections\nto a host service that never reads, filled each to credit, "
      "then stormed vsockd with connects\n\n",
      static_cast<unsigned long>(bytes >> 20), rounds, kHostileBudget,
      static_cast<unsigned long>(kHostileBuffered >> 20), 2 * kHostileBudget);
  std::printf("| %-22s | %-22s | %-22s | %-8s |\n", "victim", "vsockd Gb/s", "raw AF_UNIX Gb/s",
              "ratio");
  std::printf(
      "|------------------------|------------------------|------------------------|"
      "----------|\n");
  auto row = [](const char* name, const Phase& p, double v, double raw) {
    std::printf("| %-22s | %8.2f [%5.2f-%5.2f] | %8.2f [%5.2f-%5.2f] | %7.2fx |\n", name, v,
                Min(p.victim), Max(p.victim), raw, Min(p.raw), Max(p.raw), raw > 0 ? v / raw : 0);
  };
  row("alone", alone, a, ra);
  row("under attack", attacked, u, ru);
  std::printf(
      "\nunder attack / alone: %.2fx (vsockd), %.2fx (raw pair, the machine's own noise)\n"
      "hostile: %lu connections admitted, %lu refused; %lu storm connects refused; %.1f MiB "
      "written into its connections\nvsockd RssAnon: %ld KiB before, %ld KiB filled, %ld KiB "
      "during the storm; fds %ld -> %ld\n",
      a > 0 ? u / a : 0, ra > 0 ? ru / ra : 0, static_cast<unsigned long>(attack.admitted()),
      static_cast<unsigned long>(attack.refused()),
      static_cast<unsigned long>(attack.storm_refused()),
      static_cast<double>(attack.stuffed_bytes()) / (1 << 20), before.anon_kb, filled.anon_kb,
      during.anon_kb, before.fds, during.fds);
  return fmt::format(
      "  \"isolation\": {{\n    \"bytes\": {}, \"rounds\": {}, \"hostile_budget_connections\": {}, "
      "\"hostile_budget_buffered_bytes\": {},\n    \"victim_alone_gbps\": {:.4f}, "
      "\"victim_under_attack_gbps\": {:.4f}, \"under_attack_over_alone\": {:.4f},\n    "
      "\"raw_alone_gbps\": {:.4f}, \"raw_under_attack_gbps\": {:.4f},\n    "
      "\"hostile_admitted\": {}, \"hostile_refused\": {}, \"storm_refused\": {}, "
      "\"hostile_bytes_written\": {},\n    \"rss_anon_kib\": {{\"before\": {}, \"filled\": {}, "
      "\"storm\": {}}}, \"fds\": {{\"before\": {}, \"storm\": {}}}\n  }}",
      bytes, rounds, kHostileBudget, kHostileBuffered, a, u, a > 0 ? u / a : 0, ra, ru,
      attack.admitted(), attack.refused(), attack.storm_refused(), attack.stuffed_bytes(),
      before.anon_kb, filled.anon_kb, during.anon_kb, before.fds, during.fds);
}

}  // namespace vsockd::bench
