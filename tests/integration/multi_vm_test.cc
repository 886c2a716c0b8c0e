// Integration tests for several VMs in one vsockd (--vm / --config): the real vsockd binary,
// three virtual guests (vguest, in this process on one event-loop thread) and real AF_UNIX
// peers. Covers guest <-> guest routing (data both ways, the peer's CID seen by the
// acceptor, group isolation, unknown CIDs), one frontend going away while the others keep
// working, the hybrid paths of each VM, the YAML form, and guest <-> guest SEQPACKET (message
// boundaries and EOR kept across the router's bridge, groups still isolating).
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <random>

#include "base/unix_socket.h"
#include "tests/integration/guest_util.h"
#include "tests/integration/harness.h"
#include "vguest/guest.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;

// One side of a guest <-> guest SEQPACKET connection: sends its messages one after another
// (WriteMessage; on_writable resumes after EAGAIN) and keeps every message it receives with
// its flags. Installed and driven on the loop thread; the test thread reads `count` and, once
// it is complete, `received` under `mu`.
struct MessagePeer {
  vguest::Stream* stream = nullptr;
  std::vector<std::vector<uint8_t>> to_send;
  std::vector<bool> eor;  // per message: sent with EOR (MSG_EOR)
  size_t next = 0;
  std::mutex mu;
  std::vector<std::pair<std::vector<uint8_t>, uint32_t>> received;  // guarded by mu
  std::atomic<size_t> count{0};
  std::atomic<int> write_error{0};

  void Install(vguest::Stream* s) {
    stream = s;
    s->on_message = [this](std::span<const uint8_t> m, uint32_t flags) {
      std::lock_guard<std::mutex> lock(mu);
      received.emplace_back(std::vector<uint8_t>(m.begin(), m.end()), flags);
      count = received.size();
    };
    s->on_writable = [this] { SendMore(); };
  }
  void SendMore() {
    while (next < to_send.size()) {
      Status st = stream->WriteMessage(to_send[next], eor[next]);
      if (!st.ok()) {
        if (st.error().code != EAGAIN) write_error = st.error().code;
        return;  // EAGAIN: on_writable resumes
      }
      ++next;
    }
  }
};

// Message sizes up to the guest's buf_alloc (vguest's default, Linux's 256 KiB: the largest
// message a Linux sender lets through), with fragment-boundary neighbours.
std::vector<size_t> SeqpacketSizes() {
  const size_t buf_alloc = vguest::GuestOptions{}.buf_alloc;
  return {1,     2,     17,     4095,          4096,      4097, 65535, 65536,
          65537, 70000, 131072, buf_alloc - 1, buf_alloc, 3,    1000};
}

std::vector<uint8_t> RandomMessage(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(size);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

void FillMessages(MessagePeer* peer, uint32_t seed) {
  const auto sizes = SeqpacketSizes();
  for (size_t i = 0; i < sizes.size(); ++i) {
    peer->to_send.push_back(RandomMessage(sizes[i], seed + static_cast<uint32_t>(i)));
    peer->eor.push_back(i % 3 == 1);
  }
}

// `got` holds exactly `sent`'s messages, in order, each with EOM and with EOR exactly where
// the sender passed it.
void ExpectSameMessages(MessagePeer* got, MessagePeer* sent, const std::string& what) {
  std::lock_guard<std::mutex> lock(got->mu);
  ASSERT_EQ(got->received.size(), sent->to_send.size()) << what;
  for (size_t i = 0; i < sent->to_send.size(); ++i) {
    const auto& [bytes, flags] = got->received[i];
    EXPECT_EQ(bytes.size(), sent->to_send[i].size()) << what << ": message " << i;
    EXPECT_TRUE(bytes == sent->to_send[i]) << what << ": message " << i << " differs";
    EXPECT_NE(flags & vsock::VIRTIO_VSOCK_SEQ_EOM, 0u) << what << ": message " << i;
    EXPECT_EQ((flags & vsock::VIRTIO_VSOCK_SEQ_EOR) != 0, static_cast<bool>(sent->eor[i]))
        << what << ": message " << i << " EOR";
  }
}

struct VmSpec {
  uint64_t cid;
  std::string groups;  // empty: the default group
};

class MultiVmTest : public ::testing::Test {
 protected:
  void TearDown() override {
    loop_.Call([&] {
      drivers_.clear();
      guests_.clear();
      return 0;
    });
    if (proc_.Running()) {
      int status = proc_.Stop();
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << "vsockd did not exit cleanly on SIGTERM:\n"
          << proc_.Log();
      for (const auto& [cid, path] : sockets_) {
        struct stat st;
        EXPECT_NE(::stat(path.c_str(), &st), 0) << path << " left behind";
        EXPECT_NE(::stat(Uds(cid).c_str(), &st), 0) << Uds(cid) << " left behind";
      }
    }
  }

  std::string Socket(uint64_t cid) const { return dir_.File("vhost" + std::to_string(cid)); }
  std::string Uds(uint64_t cid) const { return dir_.File("vm" + std::to_string(cid) + ".vsock"); }

  // Starts vsockd with one --vm per spec (or with `args` as given) and attaches the guests.
  void StartDaemon(const std::vector<VmSpec>& vms, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {BuiltBinary("src/daemon/vsockd")};
    for (const auto& vm : vms) {
      // Mix '-' and '_' keys, as users of vhost-device-vsock do.
      std::string spec =
          fmt::format("guest_cid={},socket={},uds-path={}", vm.cid, Socket(vm.cid), Uds(vm.cid));
      if (!vm.groups.empty()) spec += ",groups=" + vm.groups;
      argv.push_back("--vm");
      argv.push_back(spec);
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    StartWith(argv, vms);
  }

  void StartWith(const std::vector<std::string>& argv, const std::vector<VmSpec>& vms) {
    ASSERT_TRUE(proc_.Start(argv, dir_.File("vsockd.log")).ok());
    for (const auto& vm : vms) {
      sockets_[vm.cid] = Socket(vm.cid);
      Attach(vm.cid);
    }
  }

  void Attach(uint64_t cid, bool seqpacket = true) {
    vguest::GuestOptions options;
    options.socket_path = Socket(cid);
    options.seqpacket = seqpacket;
    options.attach_timeout = 10s;
    auto guest = loop_.Call([&] { return vguest::Guest::Attach(loop_.loop(), options); });
    ASSERT_TRUE(guest.ok()) << guest.error().ToString() << "\n" << proc_.Log();
    ASSERT_EQ((*guest)->cid(), cid);
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

  // Guest `from` connects to (to_cid, port); returns the stream (nullptr) and the status.
  // With `obs`, a StreamDriver sending `data` is installed as soon as the connect completes
  // (on the loop thread: the peer may send before the test thread gets to run).
  std::pair<vguest::Stream*, Status> Connect(uint64_t from, uint64_t to_cid, uint32_t port,
                                             std::shared_ptr<StreamObserver> obs = nullptr,
                                             std::vector<uint8_t> data = {},
                                             uint16_t type = vsock::VIRTIO_VSOCK_TYPE_STREAM) {
    std::promise<std::pair<vguest::Stream*, Status>> done;
    loop_.Call([&] {
      guests_[from]->Connect(
          port,
          [&, obs, data](vguest::Stream* s, const Status& st) {
            if (st.ok() && obs) {
              auto d = std::make_unique<StreamDriver>(s, obs, data);
              d->Start();
              drivers_.push_back(std::move(d));
            }
            done.set_value({s, st});
          },
          to_cid, type);
      return 0;
    });
    auto f = done.get_future();
    if (f.wait_for(15s) != std::future_status::ready) {
      ADD_FAILURE() << "connect " << from << " -> " << to_cid << ":" << port << " never completed";
      return {nullptr, MakeError(ETIMEDOUT, "test timeout")};
    }
    return f.get();
  }

  struct Accepted {
    std::atomic<bool> got{false};
    std::atomic<uint64_t> peer_cid{0};
    std::atomic<uint32_t> peer_port{0};
    std::shared_ptr<StreamObserver> obs = std::make_shared<StreamObserver>();
  };

  // Guest `cid` listens on `port`; each accepted stream sends `reply` and half-closes.
  std::shared_ptr<Accepted> Listen(uint64_t cid, uint32_t port, std::vector<uint8_t> reply) {
    auto acc = std::make_shared<Accepted>();
    Status st = loop_.Call([&] {
      return guests_[cid]->Listen(port, [this, acc, reply](vguest::Stream* s) {
        acc->peer_cid = s->peer_cid();
        acc->peer_port = s->peer_port();
        auto d = std::make_unique<StreamDriver>(s, acc->obs, reply);
        d->Start();
        drivers_.push_back(std::move(d));
        acc->got = true;
      });
    });
    EXPECT_TRUE(st.ok()) << st.error().ToString();
    return acc;
  }

  // A full guest -> guest exchange with checksums both ways.
  void ExchangeBetween(uint64_t a, uint64_t b, uint32_t port, size_t bytes, uint64_t seed) {
    auto to_b = PatternBytes(bytes, seed);
    auto to_a = PatternBytes(bytes / 2 + 7, seed + 1);
    auto acc = Listen(b, port, to_a);
    auto obs_a = std::make_shared<StreamObserver>();
    auto [stream, st] = Connect(a, b, port, obs_a, to_b);
    ASSERT_TRUE(st.ok()) << st.error().ToString() << "\n" << proc_.Log();
    ASSERT_NE(stream, nullptr);
    EXPECT_EQ(stream->peer_cid(), b);
    uint32_t a_port = stream->local_port();
    ASSERT_TRUE(WaitFor([&] { return acc->got.load(); }));
    EXPECT_EQ(acc->peer_cid.load(), a) << "the acceptor must see the caller's CID";
    EXPECT_EQ(acc->peer_port.load(), a_port) << "and the caller's port";
    ASSERT_TRUE(WaitFor([&] { return acc->obs->eof.load() && obs_a->eof.load(); }, 30s))
        << "b got " << acc->obs->received << "/" << to_b.size() << ", a got " << obs_a->received
        << "/" << to_a.size() << "\n"
        << proc_.Log();
    EXPECT_EQ(acc->obs->received.load(), to_b.size());
    EXPECT_EQ(acc->obs->hash.load(), Fnv1a(to_b));
    EXPECT_EQ(obs_a->received.load(), to_a.size());
    EXPECT_EQ(obs_a->hash.load(), Fnv1a(to_a));
    loop_.Call([&] {
      guests_[b]->Unlisten(port);
      return 0;
    });
  }

  TempDir dir_;
  Subprocess proc_;
  LoopThread loop_;
  std::map<uint64_t, std::string> sockets_;
  std::map<uint64_t, std::unique_ptr<vguest::Guest>> guests_;  // loop thread only
  std::vector<std::unique_ptr<StreamDriver>> drivers_;         // loop thread only
};

TEST_F(MultiVmTest, GuestToGuestDataBothWaysWithChecksums) {
  StartDaemon({{3, ""}, {4, ""}, {5, ""}}, {"--workers", "2"});
  ExchangeBetween(3, 4, 5000, 3 << 20, 11);
  ExchangeBetween(4, 3, 5001, 1 << 20, 21);
  ExchangeBetween(5, 3, 5002, 1 << 20, 31);  // VM 5 shares a worker with VM 3
}

TEST_F(MultiVmTest, GuestToGuestSeqpacketKeepsMessagesAndEorBothWays) {
  StartDaemon({{3, "a"}, {4, "a"}, {5, "b"}}, {"--workers", "2"});
  for (uint64_t cid : {3u, 4u, 5u}) {
    ASSERT_TRUE(loop_.Call([&] { return guests_[cid]->seqpacket_negotiated(); })) << cid;
  }
  const uint32_t port = 5100;
  auto a = std::make_shared<MessagePeer>();
  auto b = std::make_shared<MessagePeer>();
  FillMessages(a.get(), 100);
  FillMessages(b.get(), 200);
  std::atomic<bool> accepted{false};
  std::atomic<uint64_t> b_peer_cid{0};
  std::atomic<uint32_t> b_peer_port{0};
  Status listening = loop_.Call([&] {
    return guests_[4]->Listen(
        port,
        [&, b](vguest::Stream* s) {
          b_peer_cid = s->peer_cid();
          b_peer_port = s->peer_port();
          EXPECT_TRUE(s->seqpacket());
          b->Install(s);
          b->SendMore();
          accepted = true;
        },
        vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
  });
  ASSERT_TRUE(listening.ok()) << listening.error().ToString();

  std::promise<Status> connected;
  uint32_t a_port = 0;
  loop_.Call([&] {
    vguest::Stream* s = guests_[3]->Connect(
        port,
        [&, a](vguest::Stream* s, const Status& st) {
          if (st.ok()) {
            a->Install(s);
            a->SendMore();
          }
          connected.set_value(st);
        },
        4, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
    a_port = s->local_port();
    return 0;
  });
  auto f = connected.get_future();
  ASSERT_EQ(f.wait_for(15s), std::future_status::ready) << proc_.Log();
  Status st = f.get();
  ASSERT_TRUE(st.ok()) << st.error().ToString() << "\n" << proc_.Log();
  ASSERT_TRUE(WaitFor([&] { return accepted.load(); }));
  EXPECT_EQ(b_peer_cid.load(), 3u);
  EXPECT_EQ(b_peer_port.load(), a_port);

  const size_t n = SeqpacketSizes().size();
  ASSERT_TRUE(WaitFor([&] { return a->count.load() == n && b->count.load() == n; }, 60s))
      << "4 got " << b->count.load() << "/" << n << ", 3 got " << a->count.load() << "/" << n
      << "\n"
      << proc_.Log();
  EXPECT_EQ(a->write_error.load(), 0);
  EXPECT_EQ(b->write_error.load(), 0);
  ExpectSameMessages(b.get(), a.get(), "3 -> 4");
  ExpectSameMessages(a.get(), b.get(), "4 -> 3");
  for (uint64_t cid : {3u, 4u}) {
    auto stats = loop_.Call([&] { return guests_[cid]->stats(); });
    EXPECT_EQ(stats.credit_violations, 0u) << cid;
    EXPECT_EQ(stats.rx_len_mismatch, 0u) << cid;
    EXPECT_EQ(stats.overrun_drops, 0u) << cid;
    EXPECT_EQ(stats.rst_received, 0u) << cid;
  }

  // Groups isolate SEQPACKET too: 3 and 5 share none, so RST and no REQUEST at 5.
  std::atomic<bool> five_accepted{false};
  ASSERT_TRUE(loop_
                  .Call([&] {
                    return guests_[5]->Listen(
                        port, [&](vguest::Stream*) { five_accepted = true; },
                        vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
                  })
                  .ok());
  auto [s35, st35] = Connect(3, 5, port, nullptr, {}, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_FALSE(st35.ok());
  EXPECT_EQ(st35.error().code, ECONNRESET);
  // A SEQPACKET connect to a port that has only a STREAM listener in a reachable VM: the
  // target guest's RST comes back.
  auto acc = Listen(4, port + 1, {});
  auto [s34, st34] = Connect(3, 4, port + 1, nullptr, {}, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_FALSE(st34.ok());
  EXPECT_EQ(st34.error().code, ECONNRESET);
  EXPECT_FALSE(acc->got.load());
  EXPECT_FALSE(five_accepted.load());
}

TEST_F(MultiVmTest, SeqpacketToAGuestWithoutTheFeatureGetsRst) {
  StartWith({BuiltBinary("src/daemon/vsockd"), "--vm",
             fmt::format("guest_cid=3,socket={},uds-path={}", Socket(3), Uds(3)), "--vm",
             fmt::format("guest_cid=4,socket={},uds-path={}", Socket(4), Uds(4))},
            {});
  sockets_[3] = Socket(3);
  sockets_[4] = Socket(4);
  Attach(3);
  Attach(4, /*seqpacket=*/false);  // guest 4's driver does not ack VIRTIO_VSOCK_F_SEQPACKET
  ASSERT_FALSE(loop_.Call([&] { return guests_[4]->seqpacket_negotiated(); }));
  auto acc = Listen(4, 5200, {});  // a STREAM listener: what guest 4 can have
  auto [s, st] = Connect(3, 4, 5200, nullptr, {}, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ECONNRESET);
  EXPECT_FALSE(acc->got.load());
  EXPECT_EQ(loop_.Call([&] { return guests_[4]->stats().bad_type_rx; }), 0u)
      << "vsockd must refuse it itself, never send guest 4 a SEQPACKET REQUEST";
  // STREAM between the same two still works.
  ExchangeBetween(3, 4, 5201, 64 << 10, 111);
}

TEST_F(MultiVmTest, GroupsIsolateAndUnknownCidsGetRst) {
  StartDaemon({{3, "a"}, {4, "a+b"}, {5, "b"}});
  auto acc5 = Listen(5, 6000, {});
  auto acc4 = Listen(4, 6000, {});
  // 3 and 5 share no group: RST, and guest 5 never sees a REQUEST.
  auto [s35, st35] = Connect(3, 5, 6000);
  ASSERT_FALSE(st35.ok());
  EXPECT_EQ(st35.error().code, ECONNRESET);
  // Unknown CID: RST.
  auto [s3x, st3x] = Connect(3, 99, 6000);
  ASSERT_FALSE(st3x.ok());
  EXPECT_EQ(st3x.error().code, ECONNRESET);
  // A port nobody listens on in a reachable VM: its guest's RST comes back as RST.
  auto [s34x, st34x] = Connect(3, 4, 6001);
  ASSERT_FALSE(st34x.ok());
  EXPECT_EQ(st34x.error().code, ECONNRESET);
  EXPECT_FALSE(acc5->got.load());
  // Each group works.
  ExchangeBetween(3, 4, 6002, 64 << 10, 41);
  ExchangeBetween(5, 4, 6003, 64 << 10, 51);
}

TEST_F(MultiVmTest, FrontendGoingAwayLeavesTheOthersAlone) {
  StartDaemon({{3, ""}, {4, ""}, {5, ""}}, {"--workers", "3"});
  // A long-lived 3 -> 4 connection that is mid-stream when 3 goes away.
  auto acc = Listen(4, 7000, {});
  auto [s, st] = Connect(3, 4, 7000);
  ASSERT_TRUE(st.ok()) << st.error().ToString();
  // Clang before 16 cannot capture a structured binding: capture a copy of the pointer.
  loop_.Call([stream = s] { return stream->Write("hello", 5); });
  ASSERT_TRUE(WaitFor([&] { return acc->obs->received.load() == 5; }));
  Detach(3);
  // B's side ends cleanly: EOF (SHUTDOWN) and then closed, not left hanging.
  ASSERT_TRUE(WaitFor([&] { return acc->obs->eof.load() || acc->obs->closed.load(); }, 20s))
      << proc_.Log();

  // 4 and 5 keep talking to each other and to the host.
  ExchangeBetween(4, 5, 7001, 256 << 10, 61);
  ExchangeBetween(5, 4, 7002, 256 << 10, 71);
  std::string host_listener = Uds(5) + "_9000";
  auto listener = ListenUnix(host_listener, 4, false);
  ASSERT_TRUE(listener.ok());
  auto [hs, hst] = Connect(5, vsock::VMADDR_CID_HOST, 9000);
  ASSERT_TRUE(hst.ok()) << hst.error().ToString();
  Fd peer(::accept(listener->get(), nullptr, nullptr));
  ASSERT_TRUE(peer.valid());
  // Guest 3 comes back (a new frontend on the same socket) and is reachable again.
  Attach(3);
  ExchangeBetween(4, 3, 7003, 64 << 10, 81);
  EXPECT_TRUE(proc_.Running());
}

TEST_F(MultiVmTest, HybridPathsPerVm) {
  StartDaemon({{3, ""}, {4, ""}});
  // Host -> guest through each VM's own uds-path.
  for (uint64_t cid : {3u, 4u}) {
    auto acc = Listen(cid, 8000, PatternBytes(1000, cid));
    auto fd = HybridConnect(Uds(cid), 8000);
    ASSERT_TRUE(fd.ok()) << fd.error().ToString() << "\n" << proc_.Log();
    ASSERT_TRUE(WaitFor([&] { return acc->got.load(); }));
    EXPECT_EQ(acc->peer_cid.load(), vsock::VMADDR_CID_HOST);
    std::vector<uint8_t> got(1000);
    size_t n = 0;
    while (n < got.size()) {
      ssize_t r = ::read(fd->get(), got.data() + n, got.size() - n);
      ASSERT_GT(r, 0);
      n += static_cast<size_t>(r);
    }
    EXPECT_EQ(Fnv1a(got), Fnv1a(PatternBytes(1000, cid)));
  }
  // Guest -> host: each VM reaches its own P_X, not the other's.
  auto l3 = ListenUnix(Uds(3) + "_9100", 4, false);
  ASSERT_TRUE(l3.ok());
  auto [ok3, st3] = Connect(3, vsock::VMADDR_CID_HOST, 9100);
  EXPECT_TRUE(st3.ok());
  auto [no4, st4] = Connect(4, vsock::VMADDR_CID_HOST, 9100);
  ASSERT_FALSE(st4.ok()) << "VM 4 has no listener at " << Uds(4) << "_9100";
  EXPECT_EQ(st4.error().code, ECONNRESET);
}

TEST_F(MultiVmTest, YamlConfig) {
  std::string config = dir_.File("vsockd.yaml");
  {
    std::ofstream out(config);
    out << "vms:\n";
    out << "  - guest_cid: 3\n    socket: " << Socket(3) << "\n    uds_path: " << Uds(3)
        << "\n    tx_buffer_size: 65536\n    groups: g1+g2\n";
    out << "  - guest-cid: 4\n    socket: " << Socket(4) << "\n    uds-path: " << Uds(4)
        << "\n    queue-size: 256\n    groups: [g2]\n";
    out << "  - guest_cid: 5\n    socket: " << Socket(5) << "\n    uds_path: " << Uds(5)
        << "\n    groups: g3\n";
  }
  StartWith({BuiltBinary("src/daemon/vsockd"), "--config", config}, {{3, ""}, {4, ""}, {5, ""}});
  ExchangeBetween(3, 4, 9000, 128 << 10, 91);
  auto [s, st] = Connect(4, 5, 9001);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ECONNRESET);
}

TEST_F(MultiVmTest, BadConfigurationsExit2WithAClearMessage) {
  struct Case {
    std::vector<std::string> args;
    const char* must_mention;
  };
  std::string s3 = "socket=" + Socket(3) + ",uds-path=" + Uds(3);
  std::string s4 = "socket=" + Socket(4) + ",uds-path=" + Uds(4);
  std::vector<Case> cases = {
      {{"--vm", "guest-cid=3," + s3, "--vm", "guest-cid=3," + s4}, "duplicate guest CID 3"},
      {{"--vm", "guest-cid=3," + s3, "--vm", "guest-cid=4," + s3}, "duplicate path"},
      {{"--vm", "guest-cid=2," + s3}, "reserved"},
      {{"--vm", "guest-cid=4294967296," + s3}, "32 bits"},
      {{"--vm", "guest-cid=3," + s3, "--socket", Socket(9)}, "cannot be mixed"},
      {{"--vm", "guest-cid=3," + s3 + ",colour=red"}, "unknown key 'colour'"},
  };
  for (const auto& c : cases) {
    std::string cmd = BuiltBinary("src/daemon/vsockd");
    for (const auto& a : c.args) cmd += " '" + a + "'";
    RunResult r = RunCommand(cmd);
    EXPECT_EQ(r.exit_code, 2) << cmd << "\n" << r.output;
    EXPECT_NE(r.output.find(c.must_mention), std::string::npos) << cmd << "\n" << r.output;
    struct stat st;
    EXPECT_NE(::stat(Socket(3).c_str(), &st), 0) << "nothing may be left listening";
  }
}

}  // namespace
}  // namespace vsockd::testing
