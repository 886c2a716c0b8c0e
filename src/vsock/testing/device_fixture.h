// DeviceTest: the fixture of the vsock::Device unit tests (device_test.cc: set-up, lifecycle,
// addressing, limits; device_data_test.cc: data and credit; device_seqpacket_test.cc): a
// Device on its own event loop between a FakeGuest (driver-side rings) and a
// FakeHostBackend (socketpairs), with helpers for the packets a guest sends and receives.
//
// Callers: the device's tests only. Threading: the test's thread runs the loop (Pump,
// RunUntil); nothing runs behind its back.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "vsock/device.h"
#include "vsock/testing/fake_guest.h"
#include "vsock/testing/fake_host_backend.h"

namespace vsockd::vsock::testing {

inline constexpr uint32_t kGuestPort = 1025;
inline constexpr uint32_t kHostPort = 9999;

inline std::vector<uint8_t> Bytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

inline std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Reads whatever is available from a non-blocking fd. Returns -1 on EOF seen, else bytes read.
inline ssize_t ReadAvailable(int fd, std::vector<uint8_t>* out, bool* eof = nullptr) {
  uint8_t buf[65536];
  ssize_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      out->insert(out->end(), buf, buf + n);
      total += n;
      continue;
    }
    if (n == 0 && eof != nullptr) *eof = true;
    return total;
  }
}

class DeviceTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(DeviceOptions{}, FakeGuestOptions{}); }

  void TearDown() override {
    if (!guest_) return;
    Pump();
    guest_->CollectRx();
    guest_->ReapTx();
    // Invariants of every test: tx chains come back with used len 0; rx used lengths are
    // exactly 44 + hdr.len; no rx chain is held or lost (popped == used).
    EXPECT_EQ(guest_->tx_used_nonzero(), 0u);
    EXPECT_EQ(guest_->bad_rx_used_len(), 0u);
    if (!stopped_) {
      EXPECT_EQ(guest_->rx_queue().last_avail_idx(),
                static_cast<uint16_t>(guest_->rx_used_total()));
    }
  }

  void Make(const DeviceOptions& dopts, FakeGuestOptions gopts, size_t rx_buffers = 64) {
    guest_.reset();
    device_.reset();
    backend_.reset();
    loop_ = std::move(EventLoop::Create()).value();
    backend_ = std::make_unique<FakeHostBackend>(loop_.get());
    dopts_ = dopts;
    device_ = std::make_unique<Device>(loop_.get(), backend_.get(), dopts);
    auto g = FakeGuest::Create(device_.get(), gopts);
    ASSERT_TRUE(g.ok()) << g.error().ToString();
    guest_ = std::move(g).value();
    guest_->Start();
    guest_->PostRx(rx_buffers);
    Pump();
  }

  void Pump(int rounds = 4) {
    for (int i = 0; i < rounds; ++i) loop_->RunOnce(0);
  }

  // Runs the loop (and the guest's reaping) until pred() holds; bounded, no timing asserts.
  template <typename Pred>
  bool RunUntil(Pred pred, int max_rounds = 3000) {
    for (int i = 0; i < max_rounds; ++i) {
      guest_->CollectRx();
      guest_->ReapTx();
      if (pred()) return true;
      loop_->RunOnce(2);
    }
    guest_->CollectRx();
    return pred();
  }

  // Next rx packet, running the loop a bounded while for it.
  std::optional<RxPacket> NextRx() {
    RunUntil([&] { return !guest_->rx_packets().empty(); });
    return guest_->PopRx();
  }

  // Starts a host -> guest connect to guest port 5000 whose callback stores what it got in
  // *result and attaches no host stream.
  Result<uint64_t> ConnectToGuestRecording(std::optional<Result<uint32_t>>* result) {
    return device_->ConnectToGuest(
        5000, [result](const Result<uint32_t>& r) -> std::optional<HostStream> {
          *result = r;
          return std::nullopt;
        });
  }

  // A host -> guest connect to guest port 5000 that the guest answers with an RST of
  // `rst_type`; what the connect's callback got (nullopt: it was not called).
  std::optional<Result<uint32_t>> ConnectToGuestAnsweredByRst(uint16_t rst_type) {
    std::optional<Result<uint32_t>> result;
    auto id = ConnectToGuestRecording(&result);
    EXPECT_TRUE(id.ok());
    auto req = NextRx();
    EXPECT_TRUE(req);
    if (!id.ok() || !req) return result;
    auto rst = guest_->Header(VIRTIO_VSOCK_OP_RST, 5000, req->hdr.src_port);
    rst.type = rst_type;
    EXPECT_TRUE(guest_->Send(rst).ok());
    Pump();
    return result;
  }

  // Guest connects kGuestPort -> kHostPort; returns the host peer (non-blocking).
  Fd Connect(uint32_t guest_port = kGuestPort, uint32_t host_port = kHostPort,
             uint32_t guest_buf_alloc = 256 * 1024) {
    EXPECT_TRUE(guest_
                    ->Send(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, guest_port, host_port, 0,
                                          guest_buf_alloc))
                    .ok());
    auto resp = NextRx();
    EXPECT_TRUE(resp.has_value());
    if (!resp) return Fd();
    EXPECT_EQ(resp->hdr.op, VIRTIO_VSOCK_OP_RESPONSE) << DescribeHeader(resp->hdr);
    Fd peer = backend_->TakePeer(host_port);
    EXPECT_TRUE(peer.valid());
    if (peer.valid()) {
      EXPECT_TRUE(SetNonBlocking(peer.get()).ok());
    }
    return peer;
  }

  void SendRw(const std::vector<uint8_t>& data, uint32_t fwd_cnt = 0, bool kick = true,
              uint32_t guest_port = kGuestPort, uint32_t buf_alloc = 256 * 1024) {
    auto h = guest_->Header(VIRTIO_VSOCK_OP_RW, guest_port, kHostPort,
                            static_cast<uint32_t>(data.size()), buf_alloc, fwd_cnt);
    ASSERT_TRUE(guest_->Send(h, data, kick).ok());
  }

  // Collects RW payload for the connection until `want` bytes arrived (bounded).
  std::vector<uint8_t> ReceiveRw(size_t want, std::vector<RxPacket>* others = nullptr) {
    std::vector<uint8_t> got;
    RunUntil([&] {
      while (!guest_->rx_packets().empty()) {
        RxPacket p = std::move(guest_->rx_packets().front());
        guest_->rx_packets().pop_front();
        if (p.hdr.op == VIRTIO_VSOCK_OP_RW) {
          got.insert(got.end(), p.payload.begin(), p.payload.end());
        } else if (others != nullptr) {
          others->push_back(std::move(p));
        }
      }
      return got.size() >= want;
    });
    return got;
  }

  // A connection whose host peer does not read: buf_alloc 64 KiB, a 4 KiB device socket
  // buffer, and the guest spends its whole credit (16 x 4 KiB of RandomBytes(seed + i), one
  // kick), so the device holds most of it. Returns the host peer; `sent` gets the bytes.
  Fd ConnectAndOverrunSlowHost(uint32_t seed, std::vector<uint8_t>* sent) {
    DeviceOptions o;
    o.buf_alloc = 64 * 1024;
    Make(o, FakeGuestOptions{});
    backend_->set_device_sndbuf(4096);
    Fd peer = Connect();
    for (uint32_t i = 0; i < 16; ++i) {
      auto chunk = RandomBytes(4096, seed + i);
      sent->insert(sent->end(), chunk.begin(), chunk.end());
      SendRw(chunk, 0, /*kick=*/i == 15);
    }
    Pump(10);
    return peer;
  }

  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<FakeHostBackend> backend_;
  std::unique_ptr<Device> device_;
  std::unique_ptr<FakeGuest> guest_;
  DeviceOptions dopts_;
  bool stopped_ = false;
};

}  // namespace vsockd::vsock::testing
