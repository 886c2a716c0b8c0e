// libFuzzer target: a hostile guest's tx stream into vsock::Device.
//
// The input is a sequence of records: [ctl:1][header:44][plen:2 LE][payload:plen]. ctl bits:
// 0 keep the header's src_cid (else force the guest's, so most packets pass anti-spoofing),
// 1 force dst_cid 2 and the type (SEQPACKET if bit 8 of src_port is set, else STREAM),
// 2 kick after this packet, 3 host peers write a little, 4 close one host peer, 5 post rx
// buffers, 6 run the event loop once. Host connects to odd ports are refused. SEQPACKET is
// negotiated, so both types' paths (message assembly, host records) are reached. Nothing may
// crash, leak or trip the sanitizers; every tx chain must come back with used len 0 and every
// rx used length must be 44 + hdr.len.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "base/event_loop.h"
#include "base/log.h"
#include "virtio/virtio_ring.h"
#include "vsock/device.h"
#include "vsock/testing/fake_guest.h"
#include "vsock/testing/fake_host_backend.h"

using namespace vsockd;
using namespace vsockd::vsock;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  SetLogLevel(LogLevel::kOff);
  auto loop = std::move(EventLoop::Create()).value();
  testing::FakeHostBackend backend(loop.get());
  for (uint32_t p = 1; p < 64; p += 2) backend.Refuse(p);
  DeviceOptions opts;
  opts.buf_alloc = 16 * 1024;
  opts.budget.max_connections = 8;
  opts.connect_timeout = std::chrono::milliseconds(0);
  opts.close_timeout = std::chrono::milliseconds(0);
  auto device = std::make_unique<Device>(loop.get(), &backend, opts);
  testing::FakeGuestOptions gopts;
  gopts.queue_size = 32;
  auto guest = std::move(testing::FakeGuest::Create(device.get(), gopts)).value();
  guest->Start();
  device->SetAckedFeatures((1ull << virtio::VIRTIO_F_VERSION_1) |
                           (1ull << VIRTIO_VSOCK_F_SEQPACKET));
  guest->PostRx(8);
  std::vector<Fd> peers;

  size_t off = 0;
  while (off + 1 + kHeaderSize + 2 <= size) {
    uint8_t ctl = data[off];
    PacketHeader h = DecodeHeader(data + off + 1);
    uint16_t plen;
    std::memcpy(&plen, data + off + 1 + kHeaderSize, 2);
    off += 1 + kHeaderSize + 2;
    plen = static_cast<uint16_t>(std::min<size_t>(plen, size - off));
    if (!(ctl & 1)) h.src_cid = guest->cid();
    if (ctl & 2) {
      h.dst_cid = VMADDR_CID_HOST;
      h.type = (h.src_port & 0x100) != 0 ? VIRTIO_VSOCK_TYPE_SEQPACKET : VIRTIO_VSOCK_TYPE_STREAM;
      h.src_port %= 8;
      h.dst_port %= 64;
    }
    (void)guest->Send(h, std::span<const uint8_t>(data + off, plen), (ctl & 4) != 0);
    off += plen;
    if (ctl & 8) {
      for (uint32_t p = 0; p < 64; p += 2) {
        Fd fd = backend.TakePeer(p);
        if (fd.valid()) peers.push_back(std::move(fd));
      }
      for (auto& fd : peers) {
        (void)::send(fd.get(), data, std::min<size_t>(size, 3000), MSG_DONTWAIT | MSG_NOSIGNAL);
      }
    }
    if ((ctl & 16) && !peers.empty()) peers.erase(peers.begin());
    if (ctl & 32) {
      guest->CollectRx();
      guest->PostRx(8);
    }
    if (ctl & 64) loop->RunOnce(0);
    if (ctl & 128) {
      auto r =
          device->ConnectToGuest(h.dst_port, [](Result<uint32_t> r) -> std::optional<HostStream> {
            if (!r.ok()) return std::nullopt;
            int sv[2];
            if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) return std::nullopt;
            ::close(sv[1]);
            return HostStream{Fd(sv[0]), "x"};
          });
      (void)r;
    }
  }
  guest->KickTx(/*force=*/true);
  for (int i = 0; i < 4; ++i) {
    loop->RunOnce(0);
    guest->CollectRx();
    guest->ReapTx();
  }
  if (guest->tx_used_nonzero() != 0 || guest->bad_rx_used_len() != 0) abort();
  if (guest->rx_queue().last_avail_idx() != static_cast<uint16_t>(guest->rx_used_total())) abort();
  device->FrontendGone();
  device.reset();
  return 0;
}
