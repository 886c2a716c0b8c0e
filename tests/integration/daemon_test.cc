// Integration tests: the real vsockd process, a virtual guest (vguest, in this process on its
// own event-loop thread) attached to it over vhost-user, and real AF_UNIX peers on the host.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <future>
#include <mutex>
#include <thread>

#include "base/unix_socket.h"
#include "tests/integration/echo_server.h"
#include "tests/integration/guest_util.h"
#include "tests/integration/harness.h"
#include "vguest/guest.h"
#include "virtio/driver_queue.h"
#include "vsock/packet.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kCid = 3;

// A daemon plus one attached virtual guest.
class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = std::make_unique<Daemon>(dir_, kCid);
    ASSERT_TRUE(daemon_->Start().ok()) << daemon_->Log();
    AttachGuest();
  }
  void TearDown() override {
    DetachGuest();
    if (daemon_ && daemon_->Running()) {
      int status = daemon_->Stop();
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << "vsockd did not exit cleanly on SIGTERM:\n"
          << daemon_->Log();
    }
  }

  void AttachGuest() {
    vguest::GuestOptions options;
    options.socket_path = daemon_->socket_path();
    auto guest = loop_.Call([&] { return vguest::Guest::Attach(loop_.loop(), options); });
    ASSERT_TRUE(guest.ok()) << guest.error().ToString() << "\n" << daemon_->Log();
    guest_ = std::move(*guest);
  }
  void DetachGuest() {
    loop_.Call([&] {
      guest_.reset();
      return 0;
    });
  }

  // Connects the guest to host port `port`; returns the stream once established.
  vguest::Stream* ConnectToHost(uint32_t port, Status* result = nullptr) {
    std::promise<std::pair<vguest::Stream*, Status>> done;
    loop_.Call([&] {
      guest_->Connect(port, [&](vguest::Stream* s, const Status& st) { done.set_value({s, st}); });
      return 0;
    });
    auto f = done.get_future();
    if (f.wait_for(10s) != std::future_status::ready) {
      ADD_FAILURE() << "connect to host port " << port << " never completed";
      return nullptr;
    }
    auto [stream, status] = f.get();
    if (result != nullptr) *result = status;
    return status.ok() ? stream : nullptr;
  }

  TempDir dir_;
  std::unique_ptr<Daemon> daemon_;
  LoopThread loop_;
  std::unique_ptr<vguest::Guest> guest_;
};

// Guest -> host echo of 64 MiB with a checksum over everything that came back.
TEST_F(DaemonTest, GuestToHostEcho64MiB) {
  EchoServer echo(daemon_->uds_path() + "_9999");
  ASSERT_TRUE(echo.ok());
  vguest::Stream* s = ConnectToHost(9999);
  ASSERT_NE(s, nullptr) << daemon_->Log();
  auto obs = std::make_shared<StreamObserver>();
  auto data = PatternBytes(64 << 20, 1);
  uint64_t want = Fnv1a(data);
  std::unique_ptr<StreamDriver> driver;
  loop_.Call([&] {
    driver = std::make_unique<StreamDriver>(s, obs, data);
    driver->Start();
    return 0;
  });
  ASSERT_TRUE(WaitFor([&] { return obs->eof.load(); }, 120s))
      << "received " << obs->received << " of " << data.size();
  EXPECT_EQ(obs->received.load(), data.size());
  EXPECT_EQ(obs->hash.load(), want);
  loop_.Call([&] {
    s->Close();
    return 0;
  });
}

// Host -> guest: a host program connects through the hybrid socket, streams 64 MiB to a
// guest echo service and checks what comes back.
TEST_F(DaemonTest, HostToGuestEcho64MiB) {
  std::vector<std::unique_ptr<StreamEcho>> echoes;
  Status listening = loop_.Call([&] {
    return guest_->Listen(
        5000, [&](vguest::Stream* s) { echoes.push_back(std::make_unique<StreamEcho>(s)); });
  });
  ASSERT_TRUE(listening.ok()) << listening.error().ToString();
  std::string reply;
  auto fd = HybridConnect(daemon_->uds_path(), 5000, &reply);
  ASSERT_TRUE(fd.ok()) << fd.error().ToString() << "\n" << daemon_->Log();
  EXPECT_EQ(reply.rfind("OK ", 0), 0u);
  auto data = PatternBytes(64 << 20, 2);
  std::thread writer([&] {
    EXPECT_TRUE(WriteAll(fd->get(), data.data(), data.size()).ok());
    ::shutdown(fd->get(), SHUT_WR);
  });
  std::vector<uint8_t> buf(1 << 16);
  uint64_t got = 0, hash = 0xcbf29ce484222325ull;
  while (true) {
    ssize_t n = ::read(fd->get(), buf.data(), buf.size());
    ASSERT_GE(n, 0) << std::strerror(errno);
    if (n == 0) break;
    hash = Fnv1a({buf.data(), static_cast<size_t>(n)}, hash);
    got += static_cast<uint64_t>(n);
  }
  writer.join();
  EXPECT_EQ(got, data.size());
  EXPECT_EQ(hash, Fnv1a(data));
  loop_.Call([&] {
    echoes.clear();
    return 0;
  });
}

// 1,000 connections open at the same time to one host service, each echoing its own data.
TEST_F(DaemonTest, ThousandConcurrentConnections) {
  EchoServer echo(daemon_->uds_path() + "_7777");
  ASSERT_TRUE(echo.ok());
  constexpr int kConns = 1000;
  struct Conn {
    vguest::Stream* stream = nullptr;
    std::shared_ptr<StreamObserver> obs = std::make_shared<StreamObserver>();
    std::unique_ptr<StreamDriver> driver;
    std::vector<uint8_t> data;
  };
  std::vector<Conn> conns(kConns);
  std::atomic<int> connected{0}, failed{0};
  loop_.Call([&] {
    for (int i = 0; i < kConns; ++i) {
      guest_->Connect(7777, [&, i](vguest::Stream* s, const Status& st) {
        if (!st.ok()) {
          failed++;
          return;
        }
        conns[i].stream = s;
        connected++;
      });
    }
    return 0;
  });
  ASSERT_TRUE(WaitFor([&] { return connected + failed == kConns; }, 60s))
      << connected << " connected, " << failed << " failed";
  ASSERT_EQ(failed.load(), 0) << daemon_->Log().substr(0, 4000);
  // All 1,000 are open on the host side at once before any data flows.
  EXPECT_TRUE(WaitFor([&] { return echo.open_now() == kConns; }, 10s)) << echo.open_now();
  loop_.Call([&] {
    for (int i = 0; i < kConns; ++i) {
      conns[i].data = PatternBytes(4096 + i, 100 + i);
      conns[i].driver =
          std::make_unique<StreamDriver>(conns[i].stream, conns[i].obs, conns[i].data);
      conns[i].driver->Start();
    }
    return 0;
  });
  ASSERT_TRUE(WaitFor(
      [&] {
        for (auto& c : conns) {
          if (!c.obs->eof) return false;
        }
        return true;
      },
      60s));
  for (int i = 0; i < kConns; ++i) {
    EXPECT_EQ(conns[i].obs->received.load(), conns[i].data.size()) << "connection " << i;
    EXPECT_EQ(conns[i].obs->hash.load(), Fnv1a(conns[i].data)) << "connection " << i;
  }
  EXPECT_EQ(echo.peak_open(), kConns);
  loop_.Call([&] {
    for (auto& c : conns) c.stream->Close();
    return 0;
  });
}

// A host reader that stops reading: credit holds the guest back, vsockd's memory stays
// bounded, and nothing is lost once the reader resumes.
TEST_F(DaemonTest, SlowHostReaderIsBoundedByCredit) {
  auto listener = ListenUnix(daemon_->uds_path() + "_6000", 8, /*nonblocking=*/false);
  ASSERT_TRUE(listener.ok());
  vguest::Stream* s = ConnectToHost(6000);
  ASSERT_NE(s, nullptr);
  Fd host(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(host.valid());
  long rss_before = daemon_->RssKb();

  auto obs = std::make_shared<StreamObserver>();
  auto data = PatternBytes(32 << 20, 3);
  std::unique_ptr<StreamDriver> driver;
  loop_.Call([&] {
    driver = std::make_unique<StreamDriver>(s, obs, data);
    driver->Start();
    return 0;
  });
  // Wait until the guest is stuck: nothing more goes out for a while.
  uint64_t last = 0;
  for (int stable = 0; stable < 10;) {
    std::this_thread::sleep_for(50ms);
    uint64_t now = obs->sent.load();
    stable = (now == last) ? stable + 1 : 0;
    last = now;
  }
  // What left the guest is at most vsockd's credit window plus the host socket's buffer.
  EXPECT_LT(obs->sent.load(), 8u << 20) << "the guest was not held back by credit";
  EXPECT_LT(obs->sent.load(), data.size());
  long rss_stuck = daemon_->RssKb();
  EXPECT_LT(rss_stuck - rss_before, 16 * 1024) << "vsockd grew while the reader stalled";

  // The reader resumes: every byte arrives, in order.
  std::vector<uint8_t> got;
  got.reserve(data.size());
  std::vector<uint8_t> buf(1 << 16);
  while (got.size() < data.size()) {
    ssize_t n = ::read(host.get(), buf.data(), buf.size());
    ASSERT_GT(n, 0) << "EOF/error after " << got.size() << " bytes";
    got.insert(got.end(), buf.begin(), buf.begin() + n);
  }
  EXPECT_EQ(Fnv1a(got), Fnv1a(data));
  loop_.Call([&] {
    s->Close();
    return 0;
  });
}

// shutdown(SHUT_WR) each way is EOF on the other side while the reverse direction works.
TEST_F(DaemonTest, HalfCloseBothWays) {
  // Guest half-closes: the host sees EOF, then still answers.
  auto listener = ListenUnix(daemon_->uds_path() + "_6100", 8, false);
  ASSERT_TRUE(listener.ok());
  vguest::Stream* s = ConnectToHost(6100);
  ASSERT_NE(s, nullptr);
  Fd host(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  auto obs = std::make_shared<StreamObserver>();
  obs->keep_data = true;
  std::unique_ptr<StreamDriver> driver;
  loop_.Call([&] {
    driver = std::make_unique<StreamDriver>(s, obs, std::vector<uint8_t>{'h', 'i'});
    driver->Start();  // writes "hi" then SHUTDOWN(SEND)
    return 0;
  });
  char buf[16];
  ASSERT_EQ(::read(host.get(), buf, sizeof buf), 2);
  EXPECT_EQ(::read(host.get(), buf, sizeof buf), 0) << "guest half-close was not EOF";
  ASSERT_TRUE(WriteAll(host.get(), "answer", 6).ok());
  ::shutdown(host.get(), SHUT_WR);
  ASSERT_TRUE(WaitFor([&] { return obs->eof.load(); }));
  EXPECT_EQ(std::string(obs->data.begin(), obs->data.end()), "answer");
  loop_.Call([&] {
    s->Close();
    return 0;
  });

  // Host half-closes: the guest sees EOF, then still answers.
  auto gobs = std::make_shared<StreamObserver>();
  gobs->keep_data = true;
  vguest::Stream* accepted = nullptr;
  Status listening = loop_.Call([&] {
    return guest_->Listen(6200, [&](vguest::Stream* a) {
      accepted = a;
      a->on_data = [gobs](std::span<const uint8_t> d) {
        gobs->data.insert(gobs->data.end(), d.begin(), d.end());
      };
      a->on_eof = [gobs, a] {
        gobs->eof = true;
        a->Write("reply", 5);
        a->Shutdown(false, true);
      };
    });
  });
  ASSERT_TRUE(listening.ok()) << listening.error().ToString();
  auto fd = HybridConnect(daemon_->uds_path(), 6200);
  ASSERT_TRUE(fd.ok()) << fd.error().ToString();
  ASSERT_TRUE(WriteAll(fd->get(), "question", 8).ok());
  ::shutdown(fd->get(), SHUT_WR);
  ASSERT_TRUE(WaitFor([&] { return gobs->eof.load(); })) << "host half-close was not EOF";
  EXPECT_EQ(std::string(gobs->data.begin(), gobs->data.end()), "question");
  std::string answer;
  while (true) {
    ssize_t n = ::read(fd->get(), buf, sizeof buf);
    ASSERT_GE(n, 0);
    if (n == 0) break;
    answer.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(answer, "reply");
  loop_.Call([&] {
    if (accepted != nullptr) accepted->Close();
    return 0;
  });
}

// Nobody listens: the guest's connect fails with ECONNRESET at once; a host connect to a
// guest port nobody serves gets an ERR line (never containing "OK").
TEST_F(DaemonTest, RefusedBothWays) {
  Status st;
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(ConnectToHost(4444, &st), nullptr);
  EXPECT_EQ(st.error().code, ECONNRESET) << st.error().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);

  std::string reply;
  auto fd = HybridConnect(daemon_->uds_path(), 4445, &reply);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(reply.rfind("ERR", 0), 0u) << reply;
  std::string upper = reply;
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(upper.find("OK"), std::string::npos) << reply;
}

// The host peer closes mid-transfer: the guest learns it, vsockd keeps serving.
TEST_F(DaemonTest, HostPeerClosesMidTransfer) {
  auto listener = ListenUnix(daemon_->uds_path() + "_6300", 8, false);
  ASSERT_TRUE(listener.ok());
  vguest::Stream* s = ConnectToHost(6300);
  ASSERT_NE(s, nullptr);
  Fd host(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  auto obs = std::make_shared<StreamObserver>();
  std::unique_ptr<StreamDriver> driver;
  loop_.Call([&] {
    driver = std::make_unique<StreamDriver>(s, obs, PatternBytes(16 << 20, 4));
    driver->Start();
    return 0;
  });
  std::vector<uint8_t> buf(1 << 20);
  ASSERT_GT(::read(host.get(), buf.data(), buf.size()), 0);
  host.Reset();  // gone, with data in flight
  ASSERT_TRUE(WaitFor([&] { return obs->closed.load() || obs->eof.load(); }, 10s))
      << "the guest never learned that its host peer went away";
  EXPECT_LT(obs->sent.load(), 16u << 20);

  EchoServer echo(daemon_->uds_path() + "_6301");
  vguest::Stream* again = ConnectToHost(6301);
  ASSERT_NE(again, nullptr) << "vsockd stopped serving";
  loop_.Call([&] {
    again->Close();
    s->Close();
    return 0;
  });
}

// A hostile guest: every malformed chain or packet is dropped (the chain still comes back,
// used len 0) with a log line, and vsockd keeps serving the guest's valid connections.
TEST_F(DaemonTest, HostileGuestLosesPacketsNotTheDaemon) {
  EchoServer echo(daemon_->uds_path() + "_8000");
  ASSERT_TRUE(echo.ok());
  std::vector<vsock::PacketHeader> replies;
  std::mutex replies_mu;
  size_t raw_chains = 0;
  loop_.Call([&] {
    guest_->on_rx_packet = [&](const vsock::PacketHeader& h, std::span<const uint8_t>) {
      std::lock_guard<std::mutex> lock(replies_mu);
      replies.push_back(h);
    };
    auto& q = guest_->raw_tx_queue();
    auto hdr_buf = guest_->AllocRaw(4096);
    // 1. A descriptor pointing outside guest memory.
    virtio::Segment outside[] = {{1ull << 40, 44}};
    EXPECT_TRUE(q.Add(outside, {}).ok());
    // 2. A descriptor loop: a two-descriptor chain whose tail points back at its head.
    virtio::Segment two[] = {{hdr_buf.gpa, 20}, {hdr_buf.gpa + 20, 24}};
    auto loop_head = q.Add(two, {});
    EXPECT_TRUE(loop_head.ok());
    if (loop_head.ok()) {
      virtio::vring_desc& head = q.raw_desc()[*loop_head];
      virtio::vring_desc& tail = q.raw_desc()[head.next];
      tail.flags |= virtio::VRING_DESC_F_NEXT;
      tail.next = *loop_head;
    }
    // 3. A header shorter than 44 bytes.
    virtio::Segment short_hdr[] = {{hdr_buf.gpa, 20}};
    EXPECT_TRUE(q.Add(short_hdr, {}).ok());
    // 4. A device-writable buffer in a tx chain.
    virtio::Segment in[] = {{hdr_buf.gpa + 1024, 64}};
    virtio::Segment out[] = {{hdr_buf.gpa + 2048, 44}};
    EXPECT_TRUE(q.Add(out, in).ok());
    raw_chains = 4;
    guest_->KickTx();

    vsock::PacketHeader h;
    h.src_cid = kCid;
    h.dst_cid = vsock::VMADDR_CID_HOST;
    h.src_port = 40000;
    h.dst_port = 8000;
    h.type = vsock::VIRTIO_VSOCK_TYPE_STREAM;
    h.buf_alloc = 65536;
    // 5. len larger than the payload actually present.
    h.op = vsock::VIRTIO_VSOCK_OP_RW;
    h.len = 4096;
    uint8_t ten[10] = {};
    guest_->SendRawPacket(h, ten);
    // 6. A spoofed src_cid asking for a connection: silently dropped.
    h.src_cid = 99;
    h.len = 0;
    h.op = vsock::VIRTIO_VSOCK_OP_REQUEST;
    h.src_port = 40001;
    guest_->SendRawPacket(h, {});
    // 7. An unknown op and an unknown type: answered with RST.
    h.src_cid = kCid;
    h.op = 99;
    h.src_port = 40002;
    guest_->SendRawPacket(h, {});
    h.op = vsock::VIRTIO_VSOCK_OP_REQUEST;
    h.type = 7;
    h.src_port = 40003;
    guest_->SendRawPacket(h, {});
    return 0;
  });

  // Every hand-built chain came back with used len 0.
  std::vector<virtio::UsedElem> used;
  ASSERT_TRUE(WaitFor([&] {
    auto more = loop_.Call([&] { return guest_->TakeRawTxUsed(); });
    used.insert(used.end(), more.begin(), more.end());
    return used.size() >= raw_chains;
  })) << "only "
      << used.size() << " of " << raw_chains << " hostile chains were returned";
  for (const auto& u : used) EXPECT_EQ(u.len, 0u);

  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(replies_mu);
    int rsts = 0;
    for (const auto& r : replies) {
      if (r.op == vsock::VIRTIO_VSOCK_OP_RST && (r.dst_port == 40002 || r.dst_port == 40003)) {
        ++rsts;
      }
    }
    return rsts == 2;
  })) << "unknown op/type were not answered with RST";
  {
    std::lock_guard<std::mutex> lock(replies_mu);
    for (const auto& r : replies) {
      EXPECT_NE(r.dst_port, 40001u) << "vsockd answered a spoofed src_cid";
      EXPECT_EQ(r.dst_cid, kCid);
    }
  }
  EXPECT_EQ(echo.accepted(), 0) << "a spoofed REQUEST reached the host";

  // vsockd still serves this guest.
  ASSERT_TRUE(daemon_->Running());
  loop_.Call([&] {
    guest_->on_rx_packet = nullptr;
    return 0;
  });
  vguest::Stream* s = ConnectToHost(8000);
  ASSERT_NE(s, nullptr) << daemon_->Log();
  auto obs = std::make_shared<StreamObserver>();
  auto data = PatternBytes(256 << 10, 9);
  std::unique_ptr<StreamDriver> driver;
  loop_.Call([&] {
    driver = std::make_unique<StreamDriver>(s, obs, data);
    driver->Start();
    return 0;
  });
  ASSERT_TRUE(WaitFor([&] { return obs->eof.load(); }));
  EXPECT_EQ(obs->hash.load(), Fnv1a(data));
  // And it said what it dropped.
  std::string log = daemon_->Log();
  EXPECT_NE(log.find(" W [vsockd]"), std::string::npos) << log;
  EXPECT_EQ(loop_.Call([&] { return guest_->stats().rx_len_mismatch; }), 0u);
  loop_.Call([&] {
    s->Close();
    return 0;
  });
}

// The frontend disconnects (its host peers learn it at once) and a new one attaches.
TEST_F(DaemonTest, FrontendDisconnectsAndReconnects) {
  auto listener = ListenUnix(daemon_->uds_path() + "_6400", 8, false);
  ASSERT_TRUE(listener.ok());
  ASSERT_NE(ConnectToHost(6400), nullptr);
  Fd host(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(host.valid());
  DetachGuest();
  // The host peer sees the connection end promptly, not at its next write.
  pollfd p{host.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1) << "host peer not told that the guest went away";
  char c;
  EXPECT_LE(::read(host.get(), &c, 1), 0);

  AttachGuest();
  EchoServer echo(daemon_->uds_path() + "_6401");
  vguest::Stream* s = ConnectToHost(6401);
  ASSERT_NE(s, nullptr) << daemon_->Log();
  auto obs = std::make_shared<StreamObserver>();
  std::unique_ptr<StreamDriver> driver;
  auto data = PatternBytes(1 << 20, 5);
  loop_.Call([&] {
    driver = std::make_unique<StreamDriver>(s, obs, data);
    driver->Start();
    return 0;
  });
  ASSERT_TRUE(WaitFor([&] { return obs->eof.load(); }, 30s));
  EXPECT_EQ(obs->hash.load(), Fnv1a(data));
  EXPECT_EQ(guest_->cid(), kCid);
}

}  // namespace
}  // namespace vsockd::testing
