// One vsockd, two VMs, one of them hostile (issue 12's scenario): the hostile guest opens
// more connections than its budget to a host service that accepts and never reads, and
// fills each one up to the credit vsockd gives it. vsockd must refuse the excess with RST,
// keep what it buffers within the VM's budget (credit), keep its descriptors, serve the
// other VM as before, and give the memory back when the hostile guest goes. Also: a connect
// storm, a guest that never reads host data, and the access policy both ways.
// The real vsockd binary, virtual guests (vguest) and real AF_UNIX peers.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "base/unix_socket.h"
#include "tests/integration/echo_server.h"
#include "tests/integration/guest_util.h"
#include "tests/integration/harness.h"
#include "vguest/guest.h"

// Under AddressSanitizer vsockd's allocator keeps freed memory in quarantine and adds shadow
// memory: its RSS says nothing about what vsockd itself holds or gives back.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRssMeaningful = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kRssMeaningful = false;
#else
constexpr bool kRssMeaningful = true;
#endif
#else
constexpr bool kRssMeaningful = true;
#endif

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

constexpr uint64_t kHostile = 3;
constexpr uint64_t kVictim = 4;
constexpr int kHostileBudgetConns = 64;
constexpr uint64_t kHostileBudgetBytes = 4u << 20;

long ProcKb(pid_t pid, const char* field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0)
      return std::strtol(line.c_str() + std::strlen(field), nullptr, 10);
  }
  return -1;
}

int FdCount(pid_t pid) {
  int n = 0;
  DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (d == nullptr) return -1;
  while (::readdir(d) != nullptr) ++n;
  ::closedir(d);
  return n - 2;
}

// A host service that accepts every connection and never reads.
class Sink {
 public:
  explicit Sink(const std::string& path) {
    auto fd = ListenUnix(path, 1024);
    if (fd.ok()) listener_ = std::move(*fd);
    Status st = loop_.Call([this] {
      return loop_.loop()->Add(listener_.get(), EPOLLIN, [this](uint32_t) {
        for (;;) {
          Fd c(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
          if (!c) return;
          held_.push_back(std::move(c));
          accepted_ = held_.size();
        }
      });
    });
    EXPECT_TRUE(st.ok()) << st.error().ToString();
  }
  ~Sink() {
    loop_.Call([this] {
      loop_.loop()->Remove(listener_.get());
      held_.clear();
      return 0;
    });
  }
  size_t accepted() const { return accepted_.load(); }

 private:
  LoopThread loop_;
  Fd listener_;
  std::vector<Fd> held_;
  std::atomic<size_t> accepted_{0};
};

class HostileTest : public ::testing::Test {
 protected:
  void TearDown() override {
    loop_.Call([&] {
      drivers_.clear();
      guests_.clear();
      return 0;
    });
    if (proc_.Running()) {
      int status = proc_.Stop();
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << proc_.Log();
    }
  }

  std::string Socket(uint64_t cid) const { return dir_.File("vhost" + std::to_string(cid)); }
  std::string Uds(uint64_t cid) const { return dir_.File("vm" + std::to_string(cid) + ".vsock"); }

  void Start(const std::string& hostile_extra, const std::string& victim_extra = "") {
    const auto vm = [&](uint64_t cid, const std::string& extra) {
      return fmt::format("guest-cid={},socket={},uds-path={}{}", cid, Socket(cid), Uds(cid), extra);
    };
    ASSERT_TRUE(proc_
                    .Start({BuiltBinary("src/daemon/vsockd"), "--control", dir_.File("ctl"), "--vm",
                            vm(kHostile, hostile_extra), "--vm", vm(kVictim, victim_extra)},
                           dir_.File("log"))
                    .ok());
    ASSERT_TRUE(WaitFor([&] { return UnixListening(dir_.File("ctl")); })) << proc_.Log();
  }

  void Attach(uint64_t cid) {
    vguest::GuestOptions options;
    options.socket_path = Socket(cid);
    options.attach_timeout = 10s;
    auto guest = loop_.Call([&] { return vguest::Guest::Attach(loop_.loop(), options); });
    ASSERT_TRUE(guest.ok()) << guest.error().ToString() << "\n" << proc_.Log();
    loop_.Call([&] {
      guests_[cid] = std::move(*guest);
      return 0;
    });
  }
  void Detach(uint64_t cid) {
    loop_.Call([&] {
      guests_.erase(cid);
      return 0;
    });
  }

  json Stats(uint64_t cid) {
    auto r = RunCommand(BuiltBinary("src/tools/vsockctl/vsockctl") + " --json --socket " +
                        dir_.File("ctl") + " stats " + std::to_string(cid));
    json j = json::parse(r.output, nullptr, false);
    if (j.is_discarded() || !j.contains("vms") || j["vms"].empty()) {
      ADD_FAILURE() << r.output;
      return json::object();
    }
    return j["vms"][0];
  }

  // Guest `cid` opens `n` connections to host port `port`, each writing `bytes` (never
  // finishing if the host does not read). Returns when every connect has completed.
  std::pair<int, int> OpenMany(uint64_t cid, uint32_t port, int n, size_t bytes) {
    // Shared with the callbacks: a connect may still complete after a timed-out wait.
    struct Tally {
      std::atomic<int> ok{0};
      std::atomic<int> refused{0};
      std::vector<uint8_t> data;
    };
    auto tally = std::make_shared<Tally>();
    tally->data.assign(bytes, 0x5a);
    loop_.Call([&] {
      for (int i = 0; i < n; ++i) {
        guests_[cid]->Connect(port, [this, tally](vguest::Stream* s, const Status& st) {
          if (!st.ok()) {
            ++tally->refused;
            return;
          }
          ++tally->ok;
          if (!tally->data.empty()) {
            auto d = std::make_unique<StreamDriver>(s, std::make_shared<StreamObserver>(),
                                                    tally->data, false);
            d->Start();
            drivers_.push_back(std::move(d));
          }
        });
      }
      return 0;
    });
    EXPECT_TRUE(WaitFor([&] { return tally->ok + tally->refused == n; }, 120s))
        << tally->ok << "+" << tally->refused;
    return {tally->ok.load(), tally->refused.load()};
  }

  // Victim: guest -> host echo of `bytes`; the seconds it took (negative on failure).
  double VictimEcho(size_t bytes, uint64_t seed) {
    vguest::Stream* s = nullptr;
    std::promise<vguest::Stream*> done;
    loop_.Call([&] {
      guests_[kVictim]->Connect(9999, [&](vguest::Stream* st, const Status& status) {
        done.set_value(status.ok() ? st : nullptr);
      });
      return 0;
    });
    s = done.get_future().get();
    if (s == nullptr) return -1;
    auto obs = std::make_shared<StreamObserver>();
    auto data = PatternBytes(bytes, seed);
    const auto start = std::chrono::steady_clock::now();
    loop_.Call([&] {
      auto d = std::make_unique<StreamDriver>(s, obs, data);
      d->Start();
      drivers_.push_back(std::move(d));
      return 0;
    });
    if (!WaitFor([&] { return obs->eof.load(); }, 60s)) return -1;
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(obs->hash.load(), Fnv1a(data));
    return secs;
  }

  TempDir dir_;
  Subprocess proc_;
  LoopThread loop_;
  std::map<uint64_t, std::unique_ptr<vguest::Guest>> guests_;
  std::vector<std::unique_ptr<StreamDriver>> drivers_;
};

TEST_F(HostileTest, AHostileGuestStaysWithinItsBudgetAndTheOtherVmIsServed) {
  Start(fmt::format(",max-connections={},max-buffered-bytes={},connect-rate=0", kHostileBudgetConns,
                    kHostileBudgetBytes));
  auto sink = std::make_unique<Sink>(Uds(kHostile) + "_7000");
  EchoServer echo(Uds(kVictim) + "_9999");
  ASSERT_TRUE(echo.ok());
  Attach(kHostile);
  Attach(kVictim);
  // RssAnon: vsockd's own memory (VmRSS also counts the guest memory it touched, RssShmem).
  const long base_rss = ProcKb(proc_.pid(), "RssAnon:");
  const int base_fds = FdCount(proc_.pid());
  const double alone = VictimEcho(16u << 20, 1);
  ASSERT_GT(alone, 0) << proc_.Log();

  // The attack: twice the connection budget, each writing 1 MiB the host never reads.
  auto [ok, refused] = OpenMany(kHostile, 7000, 2 * kHostileBudgetConns, 1u << 20);
  EXPECT_EQ(ok, kHostileBudgetConns) << proc_.Log();
  EXPECT_EQ(refused, kHostileBudgetConns);
  // Wait until vsockd buffers what credit lets the guest send.
  ASSERT_TRUE(WaitFor([&] { return Stats(kHostile)["buffered_bytes"].get<uint64_t>() > 0; }));
  std::this_thread::sleep_for(200ms);  // let the writes run into credit (not a sync point)

  json st = Stats(kHostile);
  EXPECT_EQ(st["connections_active"].get<uint64_t>(), static_cast<uint64_t>(kHostileBudgetConns));
  EXPECT_EQ(st["refused"]["max_connections"].get<uint64_t>(),
            static_cast<uint64_t>(kHostileBudgetConns));
  EXPECT_LE(st["credit_committed"].get<uint64_t>(), kHostileBudgetBytes);
  EXPECT_LE(st["buffered_bytes"].get<uint64_t>(), kHostileBudgetBytes);

  // The victim still connects and moves data.
  const double attacked = VictimEcho(16u << 20, 2);
  ASSERT_GT(attacked, 0) << proc_.Log();
  std::printf("victim 16 MiB echo: %.3f s alone, %.3f s under attack (%.2fx)\n", alone, attacked,
              alone / attacked);

  // Memory and descriptors stay bounded: the budget plus a constant (see docs/SECURITY.md).
  const long rss = ProcKb(proc_.pid(), "RssAnon:");
  const int fds = FdCount(proc_.pid());
  std::printf("vsockd RssAnon %ld KiB (baseline %ld), VmRSS %ld KiB, fds %d (baseline %d)\n", rss,
              base_rss, ProcKb(proc_.pid(), "VmRSS:"), fds, base_fds);
  if (kRssMeaningful) {
    EXPECT_LT(rss - base_rss, static_cast<long>(kHostileBudgetBytes / 1024) + 32 * 1024);
  }
  EXPECT_LE(fds - base_fds, kHostileBudgetConns + 8);
  EXPECT_NE(proc_.Log().find("max-connections (budget)"), std::string::npos) << proc_.Log();

  // The hostile guest goes, then its host service: what vsockd held for it (buffered, then
  // lingering for the host peer) goes back to the system.
  Detach(kHostile);
  ASSERT_TRUE(WaitFor([&] { return Stats(kHostile)["connections_active"] == 0; }));
  sink.reset();
  ASSERT_TRUE(WaitFor([&] { return Stats(kHostile)["credit_committed"] == 0; }, 20s))
      << Stats(kHostile).dump();
  WaitFor([&] { return ProcKb(proc_.pid(), "RssAnon:") - base_rss < 2 * 1024; }, 5s);
  const long after = ProcKb(proc_.pid(), "RssAnon:");
  std::printf("vsockd RssAnon after the hostile guest left: %ld KiB\n", after);
  if (kRssMeaningful) {
    EXPECT_LT(after - base_rss, 2 * 1024) << "RSS back near its baseline";
  }
}

TEST_F(HostileTest, AConnectStormIsRateLimitedAndTheOtherVmConnects) {
  Start(",connect-rate=100,connect-burst=50");
  Sink sink(Uds(kHostile) + "_7000");
  EchoServer echo(Uds(kVictim) + "_9999");
  Attach(kHostile);
  Attach(kVictim);
  auto [ok, refused] = OpenMany(kHostile, 7000, 500, 0);
  EXPECT_GE(ok, 50);
  EXPECT_LT(ok, 500) << "the storm must hit the rate";
  EXPECT_GT(Stats(kHostile)["refused"]["connect_rate"].get<uint64_t>(), 0u);
  EXPECT_GT(VictimEcho(1 << 20, 3), 0) << "the other VM is not limited";
}

TEST_F(HostileTest, PolicyBothWaysAndBetweenSiblings) {
  Start(",allow-host-ports=7000,allow-guest-ports=5000,allow-siblings=4:6000",
        ",allow-siblings=none");
  Sink sink7000(Uds(kHostile) + "_7000");
  Sink sink7001(Uds(kHostile) + "_7001");
  Attach(kHostile);
  Attach(kVictim);
  // guest -> host: 7000 allowed, 7001 refused (RST) though a listener exists.
  EXPECT_EQ(OpenMany(kHostile, 7000, 1, 0).first, 1);
  EXPECT_EQ(OpenMany(kHostile, 7001, 1, 0).second, 1);
  EXPECT_TRUE(WaitFor([&] { return sink7000.accepted() == 1; }));
  EXPECT_EQ(sink7001.accepted(), 0u) << "the host service never sees a refused connect";
  // host -> guest: 5000 allowed, 5001 answered with an ERR line.
  Status listen =
      loop_.Call([&] { return guests_[kHostile]->Listen(5001, [](vguest::Stream*) {}); });
  ASSERT_TRUE(listen.ok());
  std::string reply;
  auto fd = HybridConnect(Uds(kHostile), 5001, &reply);
  EXPECT_FALSE(fd.ok());
  EXPECT_NE(reply.find("ERR"), std::string::npos) << reply;
  EXPECT_NE(reply.find("not allowed"), std::string::npos) << reply;
  // siblings: 3 -> 4:6000 allowed by 3's policy, 4 -> 3 refused by 4's.
  Status l6000 = loop_.Call([&] { return guests_[kVictim]->Listen(6000, [](vguest::Stream*) {}); });
  ASSERT_TRUE(l6000.ok());
  std::promise<Status> to_victim;
  loop_.Call([&] {
    guests_[kHostile]->Connect(
        6000, [&](vguest::Stream*, const Status& st) { to_victim.set_value(st); }, kVictim);
    return 0;
  });
  EXPECT_TRUE(to_victim.get_future().get().ok());
  std::promise<Status> to_hostile;
  loop_.Call([&] {
    guests_[kVictim]->Connect(
        5000, [&](vguest::Stream*, const Status& st) { to_hostile.set_value(st); }, kHostile);
    return 0;
  });
  EXPECT_FALSE(to_hostile.get_future().get().ok());
  EXPECT_EQ(Stats(kVictim)["refused"]["allow_siblings"].get<uint64_t>(), 1u);
  EXPECT_EQ(Stats(kHostile)["refused"]["allow_host_ports"].get<uint64_t>(), 1u);
  EXPECT_EQ(Stats(kHostile)["refused"]["allow_guest_ports"].get<uint64_t>(), 1u);
}

TEST_F(HostileTest, AGuestThatNeverReadsMakesVsockdBufferNothing) {
  Start("");
  Attach(kHostile);
  Attach(kVictim);
  // The guest accepts a host connection and never reads; the host writes 32 MiB.
  Status listen = loop_.Call([&] {
    return guests_[kHostile]->Listen(5000, [](vguest::Stream* s) { s->PauseReading(); });
  });
  ASSERT_TRUE(listen.ok());
  auto fd = HybridConnect(Uds(kHostile), 5000);
  ASSERT_TRUE(fd.ok()) << fd.error().ToString();
  ASSERT_TRUE(SetNonBlocking(fd->get()).ok());
  std::vector<uint8_t> chunk(64 * 1024, 1);
  size_t written = 0;
  for (int i = 0; i < 512; ++i) {
    ssize_t n = ::write(fd->get(), chunk.data(), chunk.size());
    if (n > 0) written += static_cast<size_t>(n);
  }
  std::this_thread::sleep_for(100ms);
  json st = Stats(kHostile);
  EXPECT_EQ(st["buffered_bytes"].get<uint64_t>(), 0u);
  EXPECT_LT(written, 32u << 20) << "the host's writes stop: the data waits in its socket";
}

}  // namespace
}  // namespace vsockd::testing
