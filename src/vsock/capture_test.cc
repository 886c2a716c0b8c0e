// PacketCapture writes pcap files that Wireshark's own reader (tshark, when installed)
// decodes as vsock: CIDs, ports, ops and payload bytes; snap length and bounds hold.
#include "vsock/capture.h"

#include <gtest/gtest.h>
#include <linux/vsockmon.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

namespace vsockd::vsock {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/vsockd-capture-" +
         std::to_string(::getpid()) + "-" + name;
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

PacketHeader Header(uint16_t op, uint32_t len) {
  PacketHeader h;
  h.src_cid = 3;
  h.dst_cid = 2;
  h.src_port = 1234;
  h.dst_port = 5000;
  h.type = VIRTIO_VSOCK_TYPE_STREAM;
  h.op = op;
  h.len = len;
  h.buf_alloc = 262144;
  return h;
}

// Writes REQUEST, RW "hello world" (in two iovecs), RST.
void WriteKnown(PacketCapture* c) {
  c->Record(Header(VIRTIO_VSOCK_OP_REQUEST, 0), std::span<const uint8_t>());
  char a[] = "hello ";
  char b[] = "world";
  iovec v[2] = {{a, 6}, {b, 5}};
  c->Record(Header(VIRTIO_VSOCK_OP_RW, 11), std::span<const iovec>(v, 2));
  c->Record(Header(VIRTIO_VSOCK_OP_RST, 0), std::span<const uint8_t>());
}

TEST(CaptureTest, RecordsAreVsockmonThenVirtioHeaderThenPayload) {
  const std::string path = TempPath("layout.pcap");
  {
    auto c = PacketCapture::Open({path});
    ASSERT_TRUE(c.ok()) << c.error().ToString();
    WriteKnown(c->get());
    EXPECT_EQ((*c)->packets(), 3u);
  }
  auto bytes = ReadAll(path);
  ::unlink(path.c_str());
  ASSERT_GE(bytes.size(), 24u);
  uint32_t linktype;
  std::memcpy(&linktype, bytes.data() + 20, 4);
  EXPECT_EQ(linktype, kLinktypeVsock);
  // Second record: 16-byte record header, 32-byte vsockmon, 44-byte virtio, 11 payload.
  size_t second = 24 + 16 + 32 + 44;
  uint32_t incl;
  std::memcpy(&incl, bytes.data() + second + 8, 4);
  EXPECT_EQ(incl, 32u + 44u + 11u);
  af_vsockmon_hdr mon;
  std::memcpy(&mon, bytes.data() + second + 16, sizeof mon);
  EXPECT_EQ(mon.src_cid, 3u);
  EXPECT_EQ(mon.dst_port, 5000u);
  EXPECT_EQ(mon.op, AF_VSOCK_OP_PAYLOAD);
  EXPECT_EQ(mon.transport, AF_VSOCK_TRANSPORT_VIRTIO);
  EXPECT_EQ(mon.len, 44u);
  EXPECT_EQ(std::string(bytes.begin() + static_cast<long>(second + 16 + 32 + 44),
                        bytes.begin() + static_cast<long>(second + 16 + 32 + 44 + 11)),
            "hello world");
}

TEST(CaptureTest, SnapLengthAndBoundsHold) {
  const std::string path = TempPath("bounds.pcap");
  CaptureOptions opts{path, /*snaplen=*/4, /*max_bytes=*/0, /*max_packets=*/2};
  auto c = PacketCapture::Open(opts);
  ASSERT_TRUE(c.ok());
  std::vector<uint8_t> payload(1000, 0xab);
  for (int i = 0; i < 5; ++i) (*c)->Record(Header(VIRTIO_VSOCK_OP_RW, 1000), payload);
  EXPECT_EQ((*c)->packets(), 2u);
  EXPECT_TRUE((*c)->full());
  ASSERT_TRUE((*c)->Close().ok());
  EXPECT_EQ(ReadAll(path).size(), 24u + 2 * (16u + 32 + 44 + 4)) << "4 payload bytes kept each";
  c->reset();

  CaptureOptions small{path, 0, /*max_bytes=*/1000, 0};
  auto d = PacketCapture::Open(small);
  ASSERT_TRUE(d.ok());
  for (int i = 0; i < 5; ++i) (*d)->Record(Header(VIRTIO_VSOCK_OP_RW, 1000), payload);
  EXPECT_EQ((*d)->packets(), 0u) << "one record would pass max_bytes";
  d->reset();
  EXPECT_LE(ReadAll(path).size(), 1000u);
  ::unlink(path.c_str());
}

TEST(CaptureTest, TsharkDecodesIt) {
  if (std::system("command -v tshark >/dev/null 2>&1") != 0) {
    if (std::getenv("VSOCKD_REQUIRE_TSHARK") != nullptr) FAIL() << "tshark is not installed";
    GTEST_SKIP() << "tshark is not installed";
  }
  const std::string path = TempPath("tshark.pcap");
  {
    auto c = PacketCapture::Open({path});
    ASSERT_TRUE(c.ok());
    WriteKnown(c->get());
  }
  const std::string cmd = "tshark -r " + path +
                          " -T fields -E separator=, -e vsock.src_cid -e vsock.dst_cid"
                          " -e vsock.src_port -e vsock.dst_port -e vsock.op"
                          " -e vsock.virtio.op -e vsock.payload 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  EXPECT_EQ(::pclose(p), 0) << out;
  ::unlink(path.c_str());
  // One line per packet: CIDs, ports, the vsockmon op and the virtio op, the payload (hex).
  EXPECT_NE(out.find("3,2,1234,5000,1,1,"), std::string::npos) << out;
  EXPECT_NE(out.find("3,2,1234,5000,4,5,68656c6c6f20776f726c64"), std::string::npos) << out;
  EXPECT_NE(out.find("3,2,1234,5000,2,3,"), std::string::npos) << out;
}

}  // namespace
}  // namespace vsockd::vsock
