#include "vhost_user/backend.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <cstdlib>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "base/event_fd.h"
#include "base/event_loop.h"
#include "base/unix_socket.h"
#include "vhost_user/fake_device_for_test.h"
#include "vhost_user/frontend.h"
#include "virtio/virtio_ring.h"

namespace vsockd::vhost_user {
namespace {

using testing::FakeDevice;

// The fake frontend's "virtual address" of guest memory: any value works, the backend only
// translates through the table.
constexpr uint64_t kUva = 0x7f1200000000ull;
constexpr size_t kMemSize = 1 << 20;
constexpr uint32_t kQueueSize = 8;
constexpr uint64_t kProtocolBit = 1ull << VHOST_USER_F_PROTOCOL_FEATURES;

// Ring layout inside guest memory; `layout` selects a second set of addresses (a driver
// that reallocated its rings).
struct RingAddrs {
  uint64_t desc, avail, used;
};
RingAddrs Addrs(uint32_t index, int layout) {
  uint64_t base = 0x10000ull * (1 + index + 2 * layout);
  return {base, base + 0x1000, base + 0x2000};  // guest-physical == offset in the memfd
}

Frontend MustFrontend(Result<Frontend> r) {
  if (!r.ok()) {
    ADD_FAILURE() << r.error().ToString();
    std::abort();
  }
  return std::move(r).value();
}

Fd MakeEventFd() { return Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }

class BackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok());
    loop_ = std::move(*loop);
    backend_ = std::make_unique<Backend>(loop_.get(), &dev_);
    memfd_ = Fd(::memfd_create("vhost_user_test", MFD_CLOEXEC));
    ASSERT_TRUE(memfd_.valid());
    ASSERT_EQ(::ftruncate(memfd_.get(), kMemSize), 0);
    void* p = ::mmap(nullptr, kMemSize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_.get(), 0);
    ASSERT_NE(p, MAP_FAILED);
    mem_ = static_cast<uint8_t*>(p);
    for (auto& k : kick_) k = MakeEventFd();
    for (auto& c : call_) c = MakeEventFd();
  }
  void TearDown() override {
    loop_->Stop();
    if (thread_.joinable()) thread_.join();
    backend_.reset();
    if (mem_ != nullptr) ::munmap(mem_, kMemSize);
  }

  // A frontend on a socketpair; must be called before StartLoop() (Attach runs on the
  // loop's thread, which is this one until then).
  Frontend AttachPair() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    EXPECT_TRUE(backend_->Attach(Fd(sv[0])).ok());
    return MustFrontend(Frontend::FromFd(Fd(sv[1])));
  }
  void StartLoop() {
    thread_ = std::thread([this] { loop_->Run(); });
  }

  // Guest-side ring indices (the driver's avail.idx and the device's used.idx) in memory.
  void SetRingIdx(uint32_t index, int layout, uint16_t idx) {
    RingAddrs a = Addrs(index, layout);
    std::memcpy(mem_ + a.avail + 2, &idx, 2);
    std::memcpy(mem_ + a.used + 2, &idx, 2);
  }

  // What QEMU 7.2 sends at device realize.
  uint64_t Realize(Frontend& f, bool reply_ack = true) {
    auto features = f.GetFeatures();
    EXPECT_TRUE(features.ok());
    auto proto = f.GetProtocolFeatures();
    EXPECT_TRUE(proto.ok());
    uint64_t want = (1ull << VHOST_USER_PROTOCOL_F_MQ) | (1ull << VHOST_USER_PROTOCOL_F_CONFIG) |
                    (reply_ack ? 1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK : 0);
    EXPECT_TRUE(f.SetProtocolFeatures(*proto & want).ok());
    EXPECT_EQ(*f.GetQueueNum(), 2u);
    EXPECT_TRUE(f.SetOwner().ok());
    EXPECT_TRUE(f.GetFeatures().ok());
    for (uint32_t i = 0; i < 2; ++i) {
      EXPECT_TRUE(f.SetVringCall(i, call_[i].get()).ok());
      EXPECT_TRUE(f.SetVringErr(i, call_[i].get()).ok());
    }
    auto config = f.GetConfig(0, 8);
    EXPECT_TRUE(config.ok());
    return *features;
  }

  Status SendMemTable(Frontend& f) {
    virtio::MemoryRegion region{0, kMemSize, kUva, 0};
    int fds[] = {memfd_.get()};
    return f.SetMemTable(std::span(&region, 1), fds);
  }

  // What QEMU 7.2 sends when the driver sets DRIVER_OK (up to, not including, the enables).
  void Configure(Frontend& f, uint64_t features, int layout, uint16_t base) {
    ASSERT_TRUE(f.SetFeatures(features).ok());
    ASSERT_TRUE(SendMemTable(f).ok());
    for (uint32_t i = 0; i < 2; ++i) {
      RingAddrs a = Addrs(i, layout);
      ASSERT_TRUE(f.SetVringNum(i, kQueueSize).ok());
      ASSERT_TRUE(f.SetVringBase(i, base).ok());
      vhost_vring_addr addr{i, 0, kUva + a.desc, kUva + a.used, kUva + a.avail, a.used};
      ASSERT_TRUE(f.SetVringAddr(addr).ok());
      ASSERT_TRUE(f.SetVringKick(i, kick_[i].get()).ok());
    }
  }
  void Start(Frontend& f, uint64_t features, int layout, uint16_t base) {
    Configure(f, features, layout, base);
    for (uint32_t i = 0; i < 2; ++i) ASSERT_TRUE(f.SetVringEnable(i, true).ok());
    Barrier(f);
  }
  // QEMU 7.2's stop: disable, then GET_VRING_BASE. Returns the bases.
  std::pair<uint32_t, uint32_t> Stop(Frontend& f) {
    EXPECT_TRUE(f.SetVringEnable(0, false).ok());
    EXPECT_TRUE(f.SetVringEnable(1, false).ok());
    auto b0 = f.GetVringBase(0);
    auto b1 = f.GetVringBase(1);
    EXPECT_TRUE(b0.ok() && b1.ok());
    return {b0.ok() ? *b0 : ~0u, b1.ok() ? *b1 : ~0u};
  }
  // Everything sent before has been handled once a request with a reply is answered.
  void Barrier(Frontend& f) { ASSERT_TRUE(f.GetFeatures().ok()); }

  uint64_t Offered() const {
    return dev_.DeviceFeatures() | (1ull << virtio::VIRTIO_F_VERSION_1) | kProtocolBit;
  }

  FakeDevice dev_{0x1234567};
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Backend> backend_;
  std::thread thread_;
  Fd memfd_;
  uint8_t* mem_ = nullptr;
  Fd kick_[2];
  Fd call_[2];
};

TEST_F(BackendTest, Qemu72SequenceStartsBothQueuesOnlyAfterEnable) {
  Frontend f = AttachPair();
  StartLoop();
  uint64_t features = Realize(f);
  EXPECT_EQ(features, Offered());
  EXPECT_TRUE(features & (1ull << virtio::VIRTIO_F_VERSION_1));
  EXPECT_TRUE(features & kProtocolBit);

  Configure(f, Offered(), 0, 0);
  Barrier(f);
  EXPECT_EQ(dev_.Count("start 0 reset=0"), 0u) << "started before SET_VRING_ENABLE";
  EXPECT_EQ(dev_.acked(), Offered() & ~kProtocolBit);

  ASSERT_TRUE(f.SetVringEnable(0, true).ok());
  Barrier(f);
  EXPECT_EQ(dev_.Count("start 0 reset=0"), 1u);
  EXPECT_EQ(dev_.Count("start 1 reset=0"), 0u);
  ASSERT_TRUE(f.SetVringEnable(1, true).ok());
  Barrier(f);
  EXPECT_EQ(dev_.Count("start 1 reset=0"), 1u);
}

TEST_F(BackendTest, ProtocolFeaturesOfferedExactly) {
  Frontend f = AttachPair();
  StartLoop();
  auto proto = f.GetProtocolFeatures();
  ASSERT_TRUE(proto.ok());
  EXPECT_EQ(*proto, (1ull << VHOST_USER_PROTOCOL_F_MQ) | (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
                        (1ull << VHOST_USER_PROTOCOL_F_CONFIG));
  // An unoffered protocol feature is refused (visible through the ack once REPLY_ACK is on).
  ASSERT_TRUE(f.SetProtocolFeatures(*proto).ok());
  f.set_need_reply_all(true);
  EXPECT_FALSE(f.SetProtocolFeatures(*proto | (1ull << VHOST_USER_PROTOCOL_F_SLAVE_REQ)).ok());
  EXPECT_TRUE(f.SetProtocolFeatures(*proto).ok());
}

TEST_F(BackendTest, GetConfigReturnsCid) {
  Frontend f = AttachPair();
  StartLoop();
  auto config = f.GetConfig(0, 8);
  ASSERT_TRUE(config.ok()) << config.error().ToString();
  ASSERT_EQ(config->size(), 8u);
  uint64_t cid = 0;
  for (int i = 0; i < 8; ++i) cid |= uint64_t{(*config)[i]} << (8 * i);
  EXPECT_EQ(cid, 0x1234567u);
  auto high = f.GetConfig(4, 4);
  ASSERT_TRUE(high.ok());
  EXPECT_EQ(*high, std::vector<uint8_t>(4, 0));
  // Outside the config space: an empty reply (the protocol's error), session intact.
  auto bad = f.GetConfig(4, 8);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, EIO);
  EXPECT_TRUE(f.GetConfig(0, 8).ok());
}

TEST_F(BackendTest, GetVringBaseReturnsBaseAndStopsQueue) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);
  SetRingIdx(0, 0, 7);
  SetRingIdx(1, 0, 7);
  Start(f, Offered(), 0, 7);
  ASSERT_EQ(dev_.Count("start 1 reset=0"), 1u);
  auto base = f.GetVringBase(1);
  ASSERT_TRUE(base.ok()) << base.error().ToString();
  EXPECT_EQ(*base, 7u);
  EXPECT_EQ(dev_.Count("stop 1"), 1u);
  EXPECT_EQ(dev_.Count("stop 0"), 0u);
  // Ring 0 still runs and gets kicks.
  SignalEventFd(kick_[0].get());
  EXPECT_TRUE(dev_.WaitFor("kick 0"));
}

TEST_F(BackendTest, KickReachesDevice) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);
  Start(f, Offered(), 0, 0);
  SignalEventFd(kick_[1].get());
  EXPECT_TRUE(dev_.WaitFor("kick 1"));
  SignalEventFd(kick_[0].get());
  EXPECT_TRUE(dev_.WaitFor("kick 0"));
}

TEST_F(BackendTest, RepliesCarryExactly0x5EvenWhenNeedReplyWasSet) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);  // REPLY_ACK negotiated
  VhostUserHeader h{VHOST_USER_GET_FEATURES, VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK, 0};
  ASSERT_TRUE(f.SendRaw(h, {}).ok());
  uint8_t raw[20];
  ASSERT_EQ(::recv(f.fd(), raw, sizeof raw, MSG_WAITALL), 20);
  uint32_t fields[3];
  std::memcpy(fields, raw, 12);
  EXPECT_EQ(fields[0], VHOST_USER_GET_FEATURES);
  EXPECT_EQ(fields[1], 0x5u);
  EXPECT_EQ(fields[2], 8u);
  // The REPLY_ACK ack of a request without its own reply: also 0x5, value 0.
  VhostUserHeader owner{VHOST_USER_SET_OWNER, VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK, 0};
  ASSERT_TRUE(f.SendRaw(owner, {}).ok());
  ASSERT_EQ(::recv(f.fd(), raw, sizeof raw, MSG_WAITALL), 20);
  std::memcpy(fields, raw, 12);
  uint64_t value;
  std::memcpy(&value, raw + 12, 8);
  EXPECT_EQ(fields[0], VHOST_USER_SET_OWNER);
  EXPECT_EQ(fields[1], 0x5u);
  EXPECT_EQ(value, 0u);
}

TEST_F(BackendTest, SetFeaturesValidated) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);
  f.set_need_reply_all(true);
  EXPECT_FALSE(f.SetFeatures(Offered() | (1ull << 40)).ok());  // never offered
  EXPECT_FALSE(f.SetFeatures(kProtocolBit).ok());              // no VERSION_1
  EXPECT_EQ(dev_.Count("features " + std::to_string(Offered() & ~kProtocolBit)), 0u);
  EXPECT_TRUE(f.SetFeatures(Offered()).ok());
  EXPECT_EQ(dev_.acked(), Offered() & ~kProtocolBit);
}

TEST_F(BackendTest, RefusalWithoutReplyAckIsLoggedAndIgnored) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f, /*reply_ack=*/false);
  EXPECT_TRUE(f.SetFeatures(Offered() | (1ull << 40)).ok());  // sent; refused silently
  Barrier(f);
  EXPECT_EQ(dev_.acked(), 0u);
  // Unknown and unsupported requests are ignored too; the session goes on.
  ASSERT_TRUE(
      f.SendRaw({VHOST_USER_SEND_RARP, VHOST_USER_VERSION, 8}, std::vector<uint8_t>(8, 0)).ok());
  ASSERT_TRUE(f.SendRaw({77, VHOST_USER_VERSION, 3}, std::vector<uint8_t>(3, 0)).ok());
  Barrier(f);
}

TEST_F(BackendTest, UnsupportedRequestGetsFailureAck) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);
  std::vector<uint8_t> config(12 + 8, 0);
  config[4] = 8;
  ASSERT_TRUE(f.SendRaw({VHOST_USER_SET_CONFIG, VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK,
                         static_cast<uint32_t>(config.size())},
                        config)
                  .ok());
  auto ack = f.ReadRaw();
  ASSERT_TRUE(ack.ok());
  ASSERT_TRUE(ValidateReply(*ack, VHOST_USER_SET_CONFIG, 8).ok());
  uint64_t value = 0;
  ack->Get(&value);
  EXPECT_NE(value, 0u);
}

TEST_F(BackendTest, NofdKickRefused) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);
  f.set_need_reply_all(true);
  ASSERT_TRUE(f.SetFeatures(Offered()).ok());
  ASSERT_TRUE(SendMemTable(f).ok());
  RingAddrs a = Addrs(0, 0);
  ASSERT_TRUE(f.SetVringNum(0, kQueueSize).ok());
  ASSERT_TRUE(f.SetVringAddr({0, 0, kUva + a.desc, kUva + a.used, kUva + a.avail, 0}).ok());
  ASSERT_TRUE(f.SetVringEnable(0, true).ok());
  auto st = f.SetVringKick(0, -1);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(dev_.Count("start 0 reset=0"), 0u);
  // A real kick fd then starts the ring.
  EXPECT_TRUE(f.SetVringKick(0, kick_[0].get()).ok());
  EXPECT_EQ(dev_.Count("start 0 reset=0"), 1u);
}

TEST_F(BackendTest, QueueSizeValidated) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);
  f.set_need_reply_all(true);
  EXPECT_FALSE(f.SetVringNum(0, 100).ok());  // not a power of two
  EXPECT_FALSE(f.SetVringNum(0, 0).ok());
  EXPECT_FALSE(f.SetVringNum(0, 512).ok());  // above the device's maximum (256)
  EXPECT_FALSE(f.SetVringNum(2, 8).ok());    // no such vring
  EXPECT_TRUE(f.SetVringNum(0, 256).ok());
  EXPECT_FALSE(f.SetVringBase(0, 0x10000).ok());
  EXPECT_FALSE(f.SetVringEnable(5, true).ok());
}

TEST_F(BackendTest, LegacyFrontendWithoutProtocolFeaturesBitStartsOnKick) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);
  // QEMU < 7.2: bit 30 not acked, no SET_VRING_ENABLE.
  Configure(f, Offered() & ~kProtocolBit, 0, 0);
  Barrier(f);
  EXPECT_EQ(dev_.Count("start 0 reset=0"), 1u);
  EXPECT_EQ(dev_.Count("start 1 reset=0"), 1u);
}

TEST_F(BackendTest, PauseResumeIsNotADriverReset) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);
  SetRingIdx(0, 0, 5);
  SetRingIdx(1, 0, 5);
  Start(f, Offered(), 0, 5);
  EXPECT_EQ(dev_.Count("start 0 reset=0"), 1u);
  auto bases = Stop(f);
  EXPECT_EQ(bases.first, 5u);
  EXPECT_EQ(bases.second, 5u);
  EXPECT_EQ(dev_.Count("stop 0"), 1u);
  EXPECT_EQ(dev_.Count("stop 1"), 1u);
  // Resume: same rings, same indices.
  Start(f, Offered(), 0, 5);
  EXPECT_EQ(dev_.Count("start 0 reset=0"), 2u);
  EXPECT_EQ(dev_.Count("start 1 reset=0"), 2u);
  EXPECT_EQ(dev_.Count("start 0 reset=1"), 0u);
  // Disable/enable without GET_VRING_BASE is a pause too.
  ASSERT_TRUE(f.SetVringEnable(0, false).ok());
  ASSERT_TRUE(f.SetVringEnable(0, true).ok());
  Barrier(f);
  EXPECT_EQ(dev_.Count("stop 0"), 2u);
  EXPECT_EQ(dev_.Count("start 0 reset=0"), 3u);
}

TEST_F(BackendTest, RestartAtNewAddressesIsADriverReset) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);
  Start(f, Offered(), 0, 0);
  Stop(f);
  Start(f, Offered(), 1, 0);
  EXPECT_EQ(dev_.Count("start 0 reset=1"), 1u);
  EXPECT_EQ(dev_.Count("start 1 reset=1"), 1u);
}

TEST_F(BackendTest, IndicesBackToZeroAtSameAddressesIsADriverReset) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);
  SetRingIdx(0, 0, 9);
  SetRingIdx(1, 0, 9);
  Start(f, Offered(), 0, 9);
  Stop(f);
  SetRingIdx(0, 0, 0);
  SetRingIdx(1, 0, 0);
  Start(f, Offered(), 0, 0);
  EXPECT_EQ(dev_.Count("start 0 reset=1"), 1u);
  EXPECT_EQ(dev_.Count("start 1 reset=1"), 1u);
}

TEST_F(BackendTest, NewMemTableKeepsRunningQueues) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);
  Start(f, Offered(), 0, 0);
  ASSERT_TRUE(SendMemTable(f).ok());  // acked (REPLY_ACK): mapped and remapped
  Barrier(f);
  EXPECT_EQ(dev_.Count("stop 0"), 0u);
  SignalEventFd(kick_[0].get());
  EXPECT_TRUE(dev_.WaitFor("kick 0"));
}

TEST_F(BackendTest, MemoryRegionPastEndOfFileRefused) {
  Frontend f = AttachPair();
  StartLoop();
  Realize(f);
  virtio::MemoryRegion too_big{0, 2 * kMemSize, kUva, 0};
  virtio::MemoryRegion offset_past{0, kMemSize, kUva, 4096};
  int fds[] = {memfd_.get()};
  EXPECT_FALSE(f.SetMemTable(std::span(&too_big, 1), fds).ok());
  EXPECT_FALSE(f.SetMemTable(std::span(&offset_past, 1), fds).ok());
  EXPECT_TRUE(SendMemTable(f).ok());
}

TEST_F(BackendTest, FrontendCloseStopsQueuesThenReportsGone) {
  {
    Frontend f = AttachPair();
    StartLoop();
    Realize(f);
    Start(f, Offered(), 0, 0);
  }  // closes the socket
  ASSERT_TRUE(dev_.WaitFor("gone"));
  auto ev = dev_.events();
  auto pos = [&](const std::string& s) { return std::find(ev.begin(), ev.end(), s) - ev.begin(); };
  EXPECT_LT(pos("stop 0"), pos("gone"));
  EXPECT_LT(pos("stop 1"), pos("gone"));
}

// vsockd restarting under a running VM: a keeper holds the session (the observer's snapshots,
// their descriptors dup'ed, and a copy of the connection); the first backend lets go of it;
// a second one (another device, as in a new process) resumes it on the same connection. The
// frontend notices nothing, the rings resume at the used index in guest memory (chains taken
// but not completed are taken again, completed ones are not), kicks reach the new device.
TEST_F(BackendTest, ReleasedSessionResumesInAnotherBackendAtTheUsedIndex) {
  struct Kept {
    std::mutex mu;
    std::vector<uint8_t> state;
    std::vector<Fd> fds;
    bool ended = false;
  } kept;
  backend_->SetSessionObserver([&kept](const Backend& b) {
    std::lock_guard lock(kept.mu);
    kept.ended = !b.connected();
    std::vector<int> fds;
    SessionState s = b.Snapshot(&fds);
    kept.state = s.Encode();
    kept.fds.clear();
    for (int fd : fds) kept.fds.emplace_back(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  });
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Fd keeper_conn(::fcntl(sv[0], F_DUPFD_CLOEXEC, 0));
  ASSERT_TRUE(backend_->Attach(Fd(sv[0])).ok());
  Frontend f = MustFrontend(Frontend::FromFd(Fd(sv[1])));
  StartLoop();
  Realize(f);
  SetRingIdx(0, 0, 5);
  SetRingIdx(1, 0, 5);
  Start(f, Offered(), 0, 5);
  ASSERT_TRUE(dev_.WaitFor("start 1 reset=0"));
  // The driver made 4 more chains available on each ring; the old process completed 2 of
  // them (used.idx 7) before it went away.
  for (uint32_t i = 0; i < 2; ++i) {
    RingAddrs a = Addrs(i, 0);
    uint16_t avail = 9, used = 7;
    std::memcpy(mem_ + a.avail + 2, &avail, 2);
    std::memcpy(mem_ + a.used + 2, &used, 2);
  }

  auto on_loop = [this](std::function<void()> fn) {
    std::promise<void> done;
    loop_->Post([&] {
      fn();
      done.set_value();
    });
    done.get_future().wait();
  };
  on_loop([this] { backend_->Release(); });
  EXPECT_FALSE(backend_->connected());
  EXPECT_EQ(dev_.Count("gone"), 0u) << "a released session is not a frontend going away";

  FakeDevice dev2{0x1234567};
  uint16_t resumed_at[2] = {0, 0};
  dev2.on_start = [&](uint32_t index, virtio::SplitQueue* q) {
    resumed_at[index] = q->last_avail_idx();
  };
  auto backend2 = std::make_unique<Backend>(loop_.get(), &dev2);
  Status resumed;
  {
    std::lock_guard lock(kept.mu);
    ASSERT_FALSE(kept.ended);
    auto state = SessionState::Decode(kept.state, kept.fds.size());
    ASSERT_TRUE(state.ok()) << state.error().ToString();
    on_loop(
        [&] { resumed = backend2->Resume(std::move(keeper_conn), *state, std::move(kept.fds)); });
  }
  ASSERT_TRUE(resumed.ok()) << resumed.error().ToString();
  EXPECT_EQ(dev2.Count("start 0 reset=0"), 1u);
  EXPECT_EQ(dev2.Count("start 1 reset=0"), 1u);
  EXPECT_EQ(dev2.acked(), Offered() & ~kProtocolBit);
  EXPECT_EQ(resumed_at[0], 7);
  EXPECT_EQ(resumed_at[1], 7);
  // Kicks reach the new device; the frontend's next request is answered by it.
  uint64_t one = 1;
  ASSERT_EQ(::write(kick_[1].get(), &one, sizeof one), 8);
  ASSERT_TRUE(dev2.WaitFor("kick 1"));
  auto base = f.GetVringBase(0);
  ASSERT_TRUE(base.ok()) << base.error().ToString();
  EXPECT_EQ(*base, 7u);
  EXPECT_EQ(dev2.Count("stop 0"), 1u);
  on_loop([&] { backend2.reset(); });
}

TEST_F(BackendTest, ResumeRefusesAStateThatDoesNotFit) {
  StartLoop();
  SessionState s;
  s.rings.resize(3);  // the device has 2
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Fd other(sv[1]);
  Status st;
  std::promise<void> done;
  loop_->Post([&] {
    st = backend_->Resume(Fd(sv[0]), s, {});
    done.set_value();
  });
  done.get_future().wait();
  EXPECT_FALSE(st.ok());
  EXPECT_FALSE(backend_->connected());
}

// Hostile frontends: each case breaks the framing; the backend must drop the session,
// tell the device, and accept the next frontend.
struct BadCase {
  const char* name;
  std::function<void(Frontend&)> send;
};

class BackendBadMessageTest : public BackendTest, public ::testing::WithParamInterface<BadCase> {};

TEST_P(BackendBadMessageTest, DisconnectsThenServesNextFrontend) {
  std::string path = ::testing::TempDir() + "vu_bad_" + std::to_string(::getpid()) + ".sock";
  ASSERT_TRUE(backend_->Listen(path).ok());
  StartLoop();
  {
    Frontend f = MustFrontend(Frontend::Connect(path));
    Realize(f);
    GetParam().send(f);
    ASSERT_TRUE(dev_.WaitFor("gone")) << GetParam().name;
    auto after = f.ReadRaw();
    EXPECT_FALSE(after.ok());
  }
  Frontend g = MustFrontend(Frontend::Connect(path));
  Realize(g);
  auto config = g.GetConfig(0, 8);
  ASSERT_TRUE(config.ok());
  EXPECT_EQ((*config)[0], 0x67);
  Start(g, Offered(), 0, 0);
  EXPECT_EQ(dev_.Count("start 0 reset=0"), 1u);
  ::unlink(path.c_str());
}

void SendTooManyFds(Frontend& f) {
  std::vector<Fd> owned;
  std::vector<int> raw;
  for (int i = 0; i < 10; ++i) {
    owned.push_back(MakeEventFd());
    raw.push_back(owned.back().get());
  }
  VhostUserHeader h{VHOST_USER_SET_VRING_CALL, VHOST_USER_VERSION, 8};
  uint8_t buf[20] = {};
  std::memcpy(buf, &h, 12);
  iovec iov{buf, sizeof buf};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(10 * sizeof(int))] = {};
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(10 * sizeof(int));
  std::memcpy(CMSG_DATA(c), raw.data(), 10 * sizeof(int));
  ASSERT_EQ(::sendmsg(f.fd(), &msg, MSG_NOSIGNAL), 20);
}

INSTANTIATE_TEST_SUITE_P(
    Hostile, BackendBadMessageTest,
    ::testing::Values(
        BadCase{"version2",
                [](Frontend& f) {
                  ASSERT_TRUE(f.SendRaw({VHOST_USER_GET_FEATURES, 0x2, 0}, {}).ok());
                }},
        BadCase{"reserved_flag",
                [](Frontend& f) {
                  ASSERT_TRUE(f.SendRaw({VHOST_USER_GET_FEATURES, 0x101, 0}, {}).ok());
                }},
        BadCase{"reply_flag_on_request",
                [](Frontend& f) {
                  ASSERT_TRUE(f.SendRaw({VHOST_USER_SET_OWNER, 0x5, 0}, {}).ok());
                }},
        BadCase{"oversized_payload",
                [](Frontend& f) {
                  std::vector<uint8_t> big(4097, 0);
                  ASSERT_TRUE(f.SendRaw({VHOST_USER_SET_CONFIG, 0x1, 4097}, big).ok());
                }},
        BadCase{"wrong_size",
                [](Frontend& f) {
                  ASSERT_TRUE(
                      f.SendRaw({VHOST_USER_SET_VRING_NUM, 0x1, 4}, std::vector<uint8_t>(4)).ok());
                }},
        BadCase{"kick_without_fd",
                [](Frontend& f) {
                  ASSERT_TRUE(
                      f.SendRaw({VHOST_USER_SET_VRING_KICK, 0x1, 8}, std::vector<uint8_t>(8)).ok());
                }},
        BadCase{"two_fds_for_call",
                [](Frontend& f) {
                  Fd a = MakeEventFd(), b = MakeEventFd();
                  int fds[] = {a.get(), b.get()};
                  ASSERT_TRUE(
                      f.SendRaw({VHOST_USER_SET_VRING_CALL, 0x1, 8}, std::vector<uint8_t>(8), fds)
                          .ok());
                }},
        BadCase{"ten_fds", SendTooManyFds},
        BadCase{"nine_regions",
                [](Frontend& f) {
                  std::vector<uint8_t> table(8 + 9 * 32, 0);
                  table[0] = 9;
                  ASSERT_TRUE(f.SendRaw({VHOST_USER_SET_MEM_TABLE, 0x1,
                                         static_cast<uint32_t>(table.size())},
                                        table)
                                  .ok());
                }},
        BadCase{"get_vring_base_bad_index",
                [](Frontend& f) {
                  vhost_vring_state s{5, 0};
                  std::vector<uint8_t> p(8);
                  std::memcpy(p.data(), &s, 8);
                  ASSERT_TRUE(f.SendRaw({VHOST_USER_GET_VRING_BASE, 0x1, 8}, p).ok());
                }}),
    [](const ::testing::TestParamInfo<BadCase>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace vsockd::vhost_user
