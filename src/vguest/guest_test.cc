// Guest tests against the real device stack, in process: vhost_user::Backend + vsock::Device
// on their own event-loop thread (as in the daemon), with a small host backend that connects
// to AF_UNIX paths in a temp dir, and the Guest on the test thread over a real vhost-user
// socket. Also runs the vguest CLI against the same stack.
#include "vguest/guest.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <thread>

#include "base/event_fd.h"
#include "base/unix_socket.h"
#include "vhost_user/backend.h"
#include "vsock/device.h"
#include "vsock/host_backend.h"

namespace vsockd::vguest {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kCid = 3;

TEST(GuestAttachTest, FailsClearlyWhenSocketIsMissing) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  GuestOptions options;
  options.socket_path = "vguest-test-no-such-socket.sock";
  auto guest = Guest::Attach(loop->get(), options);
  ASSERT_FALSE(guest.ok());
  EXPECT_EQ(guest.error().code, ENOENT);
  EXPECT_NE(guest.error().ToString().find("vguest-test-no-such-socket.sock"), std::string::npos)
      << guest.error().ToString();
}

TEST(GuestAttachTest, RejectsQueueSizeThatIsNotAPowerOfTwo) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  GuestOptions options;
  options.socket_path = "unused.sock";
  options.queue_size = 100;
  auto guest = Guest::Attach(loop->get(), options);
  ASSERT_FALSE(guest.ok());
  EXPECT_EQ(guest.error().code, EINVAL);
}

// Host services: "<dir>/host_<port>".
class TestHostBackend : public vsock::HostBackend {
 public:
  TestHostBackend(EventLoop* loop, std::string dir) : loop_(loop), dir_(std::move(dir)) {}
  std::unique_ptr<vsock::PendingConnect> ConnectToHost(const vsock::ConnectionInfo& info,
                                                       ConnectDone done) override {
    auto pending = std::make_unique<Pending>();
    std::weak_ptr<bool> alive = pending->alive;
    std::string path = dir_ + "/host_" + std::to_string(info.host_port);
    loop_->Defer([alive, path, done = std::move(done)] {
      if (alive.expired()) return;
      auto fd = ConnectUnix(path, /*nonblocking=*/true);
      if (!fd.ok()) return done(fd.take_error());
      done(vsock::HostStream{std::move(*fd), ""});
    });
    return pending;
  }

 private:
  struct Pending : vsock::PendingConnect {
    std::shared_ptr<bool> alive = std::make_shared<bool>(true);
  };
  EventLoop* loop_;
  std::string dir_;
};

// The device side, on its own thread like the daemon's loop.
class DeviceThread {
 public:
  DeviceThread(const std::string& dir, const std::string& socket_path) {
    loop_ = EventLoop::Create().value();
    host_ = std::make_unique<TestHostBackend>(loop_.get(), dir);
    vsock::DeviceOptions opts;
    opts.guest_cid = kCid;
    device_ = std::make_unique<vsock::Device>(loop_.get(), host_.get(), opts);
    backend_ = std::make_unique<vhost_user::Backend>(loop_.get(), device_.get());
    EXPECT_TRUE(backend_->Listen(socket_path).ok());
    wake_.emplace(EventFd::Create().value());
    EXPECT_TRUE(loop_->Add(wake_->get(), EPOLLIN, [this](uint32_t) { RunPosted(); }).ok());
    thread_ = std::thread([this] { loop_->Run(); });
  }
  ~DeviceThread() {
    loop_->Stop();
    thread_.join();
    loop_->Remove(wake_->get());
    backend_.reset();
    device_.reset();
  }
  // Runs fn on the device thread.
  void Post(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      posted_.push_back(std::move(fn));
    }
    wake_->Signal();
  }
  vsock::Device* device() { return device_.get(); }

 private:
  void RunPosted() {
    wake_->Drain();
    std::vector<std::function<void()>> fns;
    {
      std::lock_guard<std::mutex> lock(mu_);
      fns.swap(posted_);
    }
    for (auto& fn : fns) fn();
  }
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<TestHostBackend> host_;
  std::unique_ptr<vsock::Device> device_;
  std::unique_ptr<vhost_user::Backend> backend_;
  std::optional<EventFd> wake_;
  std::mutex mu_;
  std::vector<std::function<void()>> posted_;
  std::thread thread_;
};

// A blocking host echo service for one connection: echoes until EOF, then half-closes.
class HostEcho {
 public:
  explicit HostEcho(const std::string& path) {
    auto l = ListenUnix(path, 16, /*nonblocking=*/false);
    EXPECT_TRUE(l.ok()) << l.error().ToString();
    listener_ = std::move(*l);
    thread_ = std::thread([this] {
      int c = ::accept(listener_.get(), nullptr, nullptr);
      if (c < 0) return;
      Fd conn(c);
      std::vector<char> buf(65536);
      while (true) {
        ssize_t n = ::read(c, buf.data(), buf.size());
        if (n <= 0) break;
        if (!WriteAll(c, buf.data(), static_cast<size_t>(n)).ok()) break;
        echoed_ += static_cast<size_t>(n);
      }
      ::shutdown(c, SHUT_WR);
      // Wait for the other side to finish before closing.
      while (::read(c, buf.data(), buf.size()) > 0) {
      }
    });
  }
  ~HostEcho() {
    ::shutdown(listener_.get(), SHUT_RDWR);
    thread_.join();
  }
  size_t echoed() const { return echoed_; }

 private:
  Fd listener_;
  std::atomic<size_t> echoed_{0};
  std::thread thread_;
};

std::vector<uint8_t> Pattern(size_t n) {
  std::vector<uint8_t> v(n);
  uint32_t x = 12345;
  for (auto& b : v) {
    x = x * 1103515245 + 12345;
    b = static_cast<uint8_t>(x >> 16);
  }
  return v;
}

class GuestDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "vguest-test-XXXXXX";
    std::string base = (std::filesystem::temp_directory_path() / tmpl).string();
    ASSERT_NE(::mkdtemp(base.data()), nullptr);
    dir_ = base;
    socket_path_ = dir_ + "/vsock.sock";
    device_ = std::make_unique<DeviceThread>(dir_, socket_path_);
    loop_ = EventLoop::Create().value();
    Attach();
  }
  void TearDown() override {
    guest_.reset();
    device_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Attach(GuestOptions options = {}) {
    options.socket_path = socket_path_;
    options.attach_timeout = 5000ms;
    auto g = Guest::Attach(loop_.get(), options);
    ASSERT_TRUE(g.ok()) << g.error().ToString();
    guest_ = std::move(*g);
  }
  // Runs the guest loop until pred() holds (bounded, so a hang fails instead of blocking).
  bool RunUntil(const std::function<bool()>& pred) {
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!pred()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      loop_->RunOnce(10);
    }
    return true;
  }
  Stream* ConnectOk(uint32_t port) {
    bool done = false;
    Status result;
    Stream* stream = guest_->Connect(port, [&](Stream*, const Status& st) {
      done = true;
      result = st;
    });
    EXPECT_TRUE(RunUntil([&] { return done; }));
    EXPECT_TRUE(result.ok()) << result.error().ToString();
    return result.ok() ? stream : nullptr;
  }
  void ExpectNoDeviceBugs() {
    Guest::Stats s = guest_->stats();
    EXPECT_EQ(s.rx_bad_len, 0u);
    EXPECT_EQ(s.rx_len_mismatch, 0u);
    EXPECT_EQ(s.rx_bad_head, 0u);
    EXPECT_EQ(s.rx_bad_dst_cid, 0u);
    EXPECT_EQ(s.credit_violations, 0u);
    EXPECT_EQ(s.overrun_drops, 0u);
    EXPECT_EQ(s.tx_bad_used_len, 0u);
    EXPECT_EQ(s.tx_bad_head, 0u);
  }
  // Writes `data` to the end (respecting credit), half-closes, collects the echo until EOF.
  void EchoThrough(Stream* s, const std::vector<uint8_t>& data) {
    std::vector<uint8_t> got;
    bool eof = false;
    size_t off = 0;
    s->on_data = [&](std::span<const uint8_t> d) { got.insert(got.end(), d.begin(), d.end()); };
    s->on_eof = [&] { eof = true; };
    std::function<void()> pump = [&] {
      while (off < data.size()) {
        size_t n = s->Write(data.data() + off, std::min<size_t>(65536, data.size() - off));
        if (n == 0) return;
        off += n;
      }
      s->Shutdown(false, true);
    };
    s->on_writable = pump;
    pump();
    ASSERT_TRUE(RunUntil([&] { return eof; })) << "got " << got.size() << " of " << data.size();
    EXPECT_EQ(got.size(), data.size());
    EXPECT_TRUE(got == data);
    s->on_data = nullptr;
    s->on_eof = nullptr;
    s->on_writable = nullptr;
  }

  std::string dir_;
  std::string socket_path_;
  std::unique_ptr<DeviceThread> device_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Guest> guest_;
};

TEST_F(GuestDeviceTest, AttachReadsCidAndPostsRxBuffers) {
  EXPECT_EQ(guest_->cid(), kCid);
  EXPECT_TRUE(guest_->acked_features() & (1ull << virtio::VIRTIO_F_VERSION_1));
  EXPECT_TRUE(guest_->attached());
  // The device offers indirect descriptors and 6.1 takes them: one ring entry per rx buffer.
  EXPECT_TRUE(guest_->acked_features() & (1ull << virtio::VIRTIO_RING_F_INDIRECT_DESC));
  EXPECT_EQ(guest_->stats().rx_buffers_posted, 128u);
}

TEST_F(GuestDeviceTest, WithoutIndirectTwoDescriptorsPerRxBuffer) {
  guest_.reset();
  GuestOptions options;
  options.indirect_desc = false;
  Attach(options);
  EXPECT_FALSE(guest_->acked_features() & (1ull << virtio::VIRTIO_RING_F_INDIRECT_DESC));
  // 128 descriptors, two per rx buffer (6.1 layout without indirect).
  EXPECT_EQ(guest_->stats().rx_buffers_posted, 64u);
  HostEcho echo(dir_ + "/host_5008");
  Stream* s = ConnectOk(5008);
  ASSERT_NE(s, nullptr);
  EchoThrough(s, Pattern(1 << 20));
  ExpectNoDeviceBugs();
}

TEST_F(GuestDeviceTest, GuestToHostEchoWithHalfClose) {
  HostEcho echo(dir_ + "/host_5000");
  Stream* s = ConnectOk(5000);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->peer_port(), 5000u);
  EXPECT_GE(s->local_port(), 1024u);
  // 4 MiB: many times the 256 KiB credit both ways, so credit updates must flow.
  EchoThrough(s, Pattern(4 << 20));
  EXPECT_EQ(echo.echoed(), 4u << 20);
  ExpectNoDeviceBugs();
  bool released = false;
  s->Close();
  // The device answers our SHUTDOWN with RST; the stream ends.
  EXPECT_TRUE(RunUntil([&] {
    released = guest_->stats().streams_active == 0;
    return released;
  }));
}

// Drain: what Write() accepted reaches the device before the guest detaches, even when the
// guest goes away right after the last write (the vguest CLI does this at exit).
TEST_F(GuestDeviceTest, DrainBeforeDetachLosesNothing) {
  // A host sink: counts what arrives until EOF (it never writes, so nothing the guest would
  // have to answer with credit updates arrives while we check the backlog).
  auto listener = ListenUnix(dir_ + "/host_5010", 4, /*nonblocking=*/false);
  ASSERT_TRUE(listener.ok()) << listener.error().ToString();
  std::atomic<size_t> received{0};
  std::atomic<bool> eof{false};
  std::thread sink([&] {
    int c = ::accept(listener->get(), nullptr, nullptr);
    if (c < 0) return;
    Fd conn(c);
    std::vector<char> buf(65536);
    ssize_t n;
    while ((n = ::read(c, buf.data(), buf.size())) > 0) received += static_cast<size_t>(n);
    eof = true;
  });
  Stream* s = ConnectOk(5010);
  ASSERT_NE(s, nullptr);
  auto data = Pattern(200 * 1024);  // within the initial 256 KiB credit: no waiting
  size_t off = 0;
  while (off < data.size()) {
    size_t n = s->Write(data.data() + off, std::min<size_t>(65536, data.size() - off));
    ASSERT_GT(n, 0u);
    off += n;
  }
  s->Shutdown(false, true);
  bool drained = false;
  size_t backlog_at_done = 1;
  guest_->Drain(5s, [&] {
    drained = true;
    // Checked here: right after, the guest may answer the host's EOF with an RST.
    backlog_at_done = guest_->tx_backlog();
  });
  EXPECT_FALSE(drained);  // never inside Drain()
  ASSERT_TRUE(RunUntil([&] { return drained; }));
  EXPECT_EQ(backlog_at_done, 0u);
  guest_.reset();
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!eof && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
  ::shutdown(listener->get(), SHUT_RDWR);
  sink.join();
  EXPECT_TRUE(eof);
  EXPECT_EQ(received, data.size());
}

TEST_F(GuestDeviceTest, ConnectToPortWithoutServiceIsRefused) {
  bool done = false;
  Status result;
  guest_->Connect(5999, [&](Stream*, const Status& st) {
    done = true;
    result = st;
  });
  ASSERT_TRUE(RunUntil([&] { return done; }));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, ECONNRESET);
  EXPECT_GE(guest_->stats().rst_received, 1u);
}

TEST_F(GuestDeviceTest, PacketForUnknownConnectionGetsRst) {
  vsock::PacketHeader h;
  h.src_cid = kCid;
  h.dst_cid = vsock::VMADDR_CID_HOST;
  h.src_port = 4242;
  h.dst_port = 4343;
  h.type = vsock::VIRTIO_VSOCK_TYPE_STREAM;
  h.op = vsock::VIRTIO_VSOCK_OP_CREDIT_UPDATE;
  h.buf_alloc = 4096;
  std::vector<vsock::PacketHeader> seen;
  guest_->on_rx_packet = [&](const vsock::PacketHeader& hdr, std::span<const uint8_t>) {
    seen.push_back(hdr);
  };
  guest_->SendRawPacket(h, {});
  ASSERT_TRUE(RunUntil([&] { return !seen.empty(); }));
  EXPECT_EQ(seen[0].op, vsock::VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(seen[0].dst_port, 4242u);
  EXPECT_EQ(seen[0].src_port, 4343u);
  EXPECT_EQ(seen[0].dst_cid, kCid);
}

TEST_F(GuestDeviceTest, HostToGuestConnectIsAcceptedAndEchoed) {
  std::vector<std::unique_ptr<std::vector<uint8_t>>> keep;
  Stream* accepted = nullptr;
  ASSERT_TRUE(guest_
                  ->Listen(7000,
                           [&](Stream* s) {
                             accepted = s;
                             s->on_data = [s](std::span<const uint8_t> d) {
                               EXPECT_EQ(s->Write(d.data(), d.size()), d.size());
                             };
                             s->on_eof = [s] { s->Shutdown(false, true); };
                           })
                  .ok());
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Fd ours(sv[0]);
  auto theirs = std::make_shared<Fd>(sv[1]);
  std::atomic<int> connect_result{-1};
  device_->Post([&, theirs] {
    auto id = device_->device()->ConnectToGuest(
        7000, [&, theirs](const Result<uint32_t>& r) -> std::optional<vsock::HostStream> {
          connect_result = r.ok() ? 0 : r.error().code;
          if (!r.ok()) return std::nullopt;
          return vsock::HostStream{std::move(*theirs), ""};
        });
    EXPECT_TRUE(id.ok());
  });
  ASSERT_TRUE(RunUntil([&] { return connect_result.load() >= 0; }));
  ASSERT_EQ(connect_result.load(), 0);
  ASSERT_NE(accepted, nullptr);
  EXPECT_EQ(accepted->local_port(), 7000u);
  EXPECT_EQ(accepted->peer_cid(), vsock::VMADDR_CID_HOST);

  ASSERT_TRUE(WriteAll(ours.get(), "ping", 4).ok());
  ::shutdown(ours.get(), SHUT_WR);
  std::string back;
  ASSERT_TRUE(SetNonBlocking(ours.get()).ok());
  ASSERT_TRUE(RunUntil([&] {
    char buf[64];
    ssize_t n = ::read(ours.get(), buf, sizeof buf);
    if (n > 0) back.append(buf, static_cast<size_t>(n));
    return n == 0;  // EOF: the guest half-closed after echoing
  }));
  EXPECT_EQ(back, "ping");
  ExpectNoDeviceBugs();
}

TEST_F(GuestDeviceTest, ListenerRefusesWhenNobodyListens) {
  std::atomic<int> connect_result{-1};
  device_->Post([&] {
    auto id = device_->device()->ConnectToGuest(
        7001, [&](const Result<uint32_t>& r) -> std::optional<vsock::HostStream> {
          connect_result = r.ok() ? 0 : r.error().code;
          return std::nullopt;
        });
    EXPECT_TRUE(id.ok());
  });
  ASSERT_TRUE(RunUntil([&] { return connect_result.load() >= 0; }));
  EXPECT_EQ(connect_result.load(), ECONNREFUSED);
  EXPECT_GE(guest_->stats().rst_sent, 1u);
}

TEST_F(GuestDeviceTest, PauseAndResumeKeepStreams) {
  HostEcho echo(dir_ + "/host_5001");
  Stream* s = ConnectOk(5001);
  ASSERT_NE(s, nullptr);
  bool closed = false;
  s->on_closed = [&](const Status&) { closed = true; };
  ASSERT_TRUE(guest_->Pause().ok());
  EXPECT_FALSE(guest_->running());
  EXPECT_EQ(s->Write("x", 1), 0u);  // no tx while the VM is stopped
  ASSERT_TRUE(guest_->Resume().ok());
  EXPECT_FALSE(closed);
  EchoThrough(s, Pattern(300000));
  ExpectNoDeviceBugs();
}

TEST_F(GuestDeviceTest, DriverResetResetsStreamsAndGuestWorksAfter) {
  HostEcho echo(dir_ + "/host_5002");
  Stream* s = ConnectOk(5002);
  ASSERT_NE(s, nullptr);
  Status closed;
  bool got_closed = false;
  s->on_closed = [&](const Status& st) {
    got_closed = true;
    closed = st;
  };
  ASSERT_TRUE(guest_->ResetDriver().ok());
  ASSERT_TRUE(got_closed);
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.error().code, ECONNRESET);
  s->Close();

  HostEcho echo2(dir_ + "/host_5003");
  Stream* again = ConnectOk(5003);
  ASSERT_NE(again, nullptr);
  EchoThrough(again, Pattern(100000));
  ExpectNoDeviceBugs();
}

TEST_F(GuestDeviceTest, CombinedRxDescriptorsAndNoEventIdx) {
  guest_.reset();
  GuestOptions options;
  options.rx_combined_desc = true;
  options.event_idx = false;
  options.buf_alloc = 64 * 1024;
  Attach(options);
  EXPECT_FALSE(guest_->acked_features() & (1ull << virtio::VIRTIO_RING_F_EVENT_IDX));
  EXPECT_EQ(guest_->stats().rx_buffers_posted, 128u);
  HostEcho echo(dir_ + "/host_5004");
  Stream* s = ConnectOk(5004);
  ASSERT_NE(s, nullptr);
  EchoThrough(s, Pattern(1 << 20));
  ExpectNoDeviceBugs();
}

TEST_F(GuestDeviceTest, BackendGoneResetsStreams) {
  HostEcho echo(dir_ + "/host_5005");
  Stream* s = ConnectOk(5005);
  ASSERT_NE(s, nullptr);
  Status closed;
  bool got_closed = false;
  s->on_closed = [&](const Status& st) {
    got_closed = true;
    closed = st;
  };
  device_.reset();  // the daemon dies
  ASSERT_TRUE(RunUntil([&] { return got_closed; }));
  EXPECT_EQ(closed.error().code, ECONNRESET);
  EXPECT_FALSE(guest_->attached());
}

// ---- The CLI against the same stack ----

std::string RunCommand(const std::string& cmd, int* status) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *status = ::pclose(p);
  return out;
}

TEST_F(GuestDeviceTest, CliInfoPrintsCid) {
  guest_.reset();  // the backend serves one frontend at a time
  int status = -1;
  std::string out =
      RunCommand(std::string(VGUEST_BINARY) + " --socket " + socket_path_ + " info", &status);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
  EXPECT_NE(out.find("cid 3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("VIRTIO_F_VERSION_1"), std::string::npos) << out;
}

TEST_F(GuestDeviceTest, CliConnectRelaysStdinAndStdout) {
  guest_.reset();
  HostEcho echo(dir_ + "/host_5100");
  int status = -1;
  std::string out =
      RunCommand("head -c 300000 /dev/zero | tr '\\0' 'a' | " + std::string(VGUEST_BINARY) +
                     " --socket " + socket_path_ + " connect 5100",
                 &status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(out.size(), 300000u);
  EXPECT_EQ(out.find_first_not_of('a'), std::string::npos);
}

TEST_F(GuestDeviceTest, CliConnectRefusedExitsNonZero) {
  guest_.reset();
  int status = -1;
  std::string out = RunCommand("echo hi | " + std::string(VGUEST_BINARY) + " --socket " +
                                   socket_path_ + " connect 5199 2>&1",
                               &status);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(out.find("refused"), std::string::npos) << out;
}

TEST_F(GuestDeviceTest, CliListenAcceptsOneConnectionAndRelays) {
  guest_.reset();
  int status = -1;
  std::string out;
  std::thread cli([&] {
    out = RunCommand("printf pong | " + std::string(VGUEST_BINARY) + " --socket " + socket_path_ +
                         " --attach-timeout-ms 5000 listen 7100",
                     &status);
  });
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Fd ours(sv[0]);
  auto theirs = std::make_shared<Fd>(sv[1]);
  // The device queues the REQUEST until the CLI's rx ring runs (connect_timeout); retry in
  // case the CLI process took longer than that to start.
  int result = -1;
  for (int attempt = 0; attempt < 5 && result != 0; ++attempt) {
    std::atomic<int> r{-1};
    device_->Post([&, theirs] {
      auto id = device_->device()->ConnectToGuest(
          7100, [&, theirs](const Result<uint32_t>& res) -> std::optional<vsock::HostStream> {
            r = res.ok() ? 0 : res.error().code;
            if (!res.ok()) return std::nullopt;
            return vsock::HostStream{std::move(*theirs), ""};
          });
      if (!id.ok()) r = id.error().code;
    });
    for (int i = 0; i < 2000 && r.load() < 0; ++i) std::this_thread::sleep_for(5ms);
    result = r.load();
  }
  ASSERT_EQ(result, 0);
  ASSERT_TRUE(WriteAll(ours.get(), "ping", 4).ok());
  ::shutdown(ours.get(), SHUT_WR);
  std::string back;
  char buf[64];
  ssize_t n;
  while ((n = ::read(ours.get(), buf, sizeof buf)) > 0) back.append(buf, static_cast<size_t>(n));
  cli.join();
  EXPECT_EQ(back, "pong");
  EXPECT_EQ(out, "ping");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

}  // namespace
}  // namespace vsockd::vguest
