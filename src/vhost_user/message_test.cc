#include "vhost_user/message.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "base/unix_socket.h"

namespace vsockd::vhost_user {
namespace {

struct Pair {
  Fd a, b;
};

Pair MakePair() {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  return {Fd(sv[0]), Fd(sv[1])};
}

Fd MakeEventFd() { return Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }

Message Make(uint32_t request, std::vector<uint8_t> payload, size_t nfds = 0,
             uint32_t flags = VHOST_USER_VERSION) {
  Message m;
  m.request = request;
  m.flags = flags;
  m.payload = std::move(payload);
  for (size_t i = 0; i < nfds; ++i) m.fds.push_back(MakeEventFd());
  return m;
}

template <typename T>
std::vector<uint8_t> Bytes(const T& v) {
  std::vector<uint8_t> out(sizeof v);
  std::memcpy(out.data(), &v, sizeof v);
  return out;
}

TEST(MessageTest, RoundTripWithFds) {
  auto p = MakePair();
  Fd e1 = MakeEventFd(), e2 = MakeEventFd();
  int fds[] = {e1.get(), e2.get()};
  std::vector<uint8_t> payload = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  ASSERT_TRUE(
      WriteMessage(p.a.get(), VHOST_USER_SET_MEM_TABLE, VHOST_USER_VERSION, payload, fds).ok());
  auto m = ReadMessage(p.b.get());
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  EXPECT_EQ(m->request, VHOST_USER_SET_MEM_TABLE);
  EXPECT_EQ(m->flags, VHOST_USER_VERSION);
  EXPECT_EQ(m->payload, payload);
  ASSERT_EQ(m->fds.size(), 2u);
  // The received fds are live duplicates of ours.
  uint64_t one = 1;
  ASSERT_EQ(::write(m->fds[1].get(), &one, sizeof one), 8);
  uint64_t got = 0;
  EXPECT_EQ(::read(e2.get(), &got, sizeof got), 8);
  EXPECT_EQ(got, 1u);
}

TEST(MessageTest, ReplyFlagsAreExactly0x5) {
  auto p = MakePair();
  ASSERT_TRUE(WriteReplyU64(p.a.get(), VHOST_USER_GET_FEATURES, 0x1234).ok());
  uint8_t raw[20];
  ASSERT_EQ(::recv(p.b.get(), raw, sizeof raw, MSG_WAITALL), 20);
  uint32_t request, flags, size;
  std::memcpy(&request, raw, 4);
  std::memcpy(&flags, raw + 4, 4);
  std::memcpy(&size, raw + 8, 4);
  EXPECT_EQ(request, VHOST_USER_GET_FEATURES);
  EXPECT_EQ(flags, 0x5u);
  EXPECT_EQ(size, 8u);
  uint64_t value;
  std::memcpy(&value, raw + 12, 8);
  EXPECT_EQ(value, 0x1234u);
}

TEST(MessageTest, HeaderArrivingInPieces) {
  auto p = MakePair();
  VhostUserHeader h{VHOST_USER_SET_FEATURES, VHOST_USER_VERSION, 8};
  uint64_t v = 42;
  uint8_t buf[20];
  std::memcpy(buf, &h, 12);
  std::memcpy(buf + 12, &v, 8);
  ASSERT_EQ(::send(p.a.get(), buf, 5, 0), 5);
  ASSERT_EQ(::send(p.a.get(), buf + 5, 10, 0), 10);
  ASSERT_EQ(::send(p.a.get(), buf + 15, 5, 0), 5);
  auto m = ReadMessage(p.b.get());
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  uint64_t out = 0;
  ASSERT_TRUE(m->Get(&out));
  EXPECT_EQ(out, 42u);
}

TEST(MessageTest, CleanEofIsPeerClosed) {
  auto p = MakePair();
  p.a.Reset();
  auto m = ReadMessage(p.b.get());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, kPeerClosed);
}

TEST(MessageTest, EofInsideMessageIsProtocolError) {
  auto p = MakePair();
  VhostUserHeader h{VHOST_USER_SET_FEATURES, VHOST_USER_VERSION, 8};
  ASSERT_EQ(::send(p.a.get(), &h, 12, 0), 12);
  ASSERT_EQ(::send(p.a.get(), "abc", 3, 0), 3);
  p.a.Reset();
  auto m = ReadMessage(p.b.get());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, EPROTO);
}

TEST(MessageTest, ReadRejectsBadHeaders) {
  struct Case {
    uint32_t flags, size;
  } cases[] = {{0x0, 0}, {0x2, 0}, {0x3, 0}, {0x11, 0}, {0x80000001, 0}, {0x1, 4097}};
  for (const auto& c : cases) {
    auto p = MakePair();
    VhostUserHeader h{VHOST_USER_GET_FEATURES, c.flags, c.size};
    ASSERT_EQ(::send(p.a.get(), &h, 12, 0), 12);
    auto m = ReadMessage(p.b.get());
    ASSERT_FALSE(m.ok()) << "flags " << c.flags << " size " << c.size;
    EXPECT_EQ(m.error().code, EBADMSG);
  }
}

TEST(MessageTest, ReadRejectsTooManyFds) {
  auto p = MakePair();
  std::vector<Fd> owned;
  std::vector<int> raw;
  for (int i = 0; i < 10; ++i) {
    owned.push_back(MakeEventFd());
    raw.push_back(owned.back().get());
  }
  VhostUserHeader h{VHOST_USER_SET_VRING_CALL, VHOST_USER_VERSION, 8};
  uint8_t buf[20] = {};
  std::memcpy(buf, &h, 12);
  // SendWithFds caps at 8, so build the sendmsg by hand.
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
  ASSERT_EQ(::sendmsg(p.a.get(), &msg, 0), 20);
  auto m = ReadMessage(p.b.get());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, EBADMSG);
}

TEST(MessageTest, WriteRefusesOversizedPayloadAndTooManyFds) {
  auto p = MakePair();
  std::vector<uint8_t> big(kMaxPayloadSize + 1);
  EXPECT_EQ(WriteMessage(p.a.get(), VHOST_USER_SET_CONFIG, 1, big).error().code, EMSGSIZE);
  int fds[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(WriteMessage(p.a.get(), VHOST_USER_SET_CONFIG, 1, {}, fds).error().code, EINVAL);
}

TEST(MessageTest, ValidateAcceptsWellFormedRequests) {
  EXPECT_TRUE(ValidateRequest(Make(VHOST_USER_GET_FEATURES, {})).ok());
  EXPECT_TRUE(ValidateRequest(Make(VHOST_USER_SET_FEATURES, Bytes(uint64_t{1}))).ok());
  EXPECT_TRUE(ValidateRequest(Make(VHOST_USER_GET_FEATURES, {}, 0,
                                   VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK))
                  .ok());
  EXPECT_TRUE(
      ValidateRequest(Make(VHOST_USER_SET_VRING_NUM, Bytes(vhost_vring_state{0, 128}))).ok());
  EXPECT_TRUE(ValidateRequest(Make(VHOST_USER_SET_VRING_ADDR, Bytes(vhost_vring_addr{}))).ok());
  EXPECT_TRUE(ValidateRequest(Make(VHOST_USER_SET_VRING_KICK, Bytes(uint64_t{1}), 1)).ok());
  EXPECT_TRUE(ValidateRequest(Make(VHOST_USER_SET_VRING_CALL,
                                   Bytes(uint64_t{1 | VHOST_USER_VRING_NOFD_MASK}), 0))
                  .ok());
  std::vector<uint8_t> table(8 + 2 * 32, 0);
  table[0] = 2;
  EXPECT_TRUE(ValidateRequest(Make(VHOST_USER_SET_MEM_TABLE, table, 2)).ok());
  std::vector<uint8_t> config(12 + 8, 0);
  config[4] = 8;
  EXPECT_TRUE(ValidateRequest(Make(VHOST_USER_GET_CONFIG, config)).ok());
  // Unknown requests pass the framing checks (the backend refuses them itself).
  EXPECT_TRUE(ValidateRequest(Make(99, std::vector<uint8_t>(17), 1)).ok());
}

TEST(MessageTest, ValidateRejectsMalformedRequests) {
  // Wrong exact sizes.
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_GET_FEATURES, {1})).ok());
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_SET_FEATURES, {1, 2, 3, 4})).ok());
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_SET_VRING_NUM, std::vector<uint8_t>(12))).ok());
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_SET_VRING_ADDR, std::vector<uint8_t>(32))).ok());
  // The reply bit on a request.
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_GET_FEATURES, {}, 0, kBackendReplyFlags)).ok());
  // Fd counts.
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_SET_FEATURES, Bytes(uint64_t{1}), 1)).ok());
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_SET_VRING_KICK, Bytes(uint64_t{0}), 0)).ok());
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_SET_VRING_KICK, Bytes(uint64_t{0}), 2)).ok());
  EXPECT_FALSE(ValidateRequest(
                   Make(VHOST_USER_SET_VRING_CALL, Bytes(uint64_t{VHOST_USER_VRING_NOFD_MASK}), 1))
                   .ok());
  // Reserved bits in a vring file payload.
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_SET_VRING_ERR, Bytes(uint64_t{0x200}), 1)).ok());
  // Memory tables: count vs size vs fds, and too many regions.
  std::vector<uint8_t> table(8 + 2 * 32, 0);
  table[0] = 2;
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_SET_MEM_TABLE, table, 1)).ok());
  table[0] = 3;
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_SET_MEM_TABLE, table, 3)).ok());
  std::vector<uint8_t> nine(8 + 9 * 32, 0);
  nine[0] = 9;
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_SET_MEM_TABLE, nine, 8)).ok());
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_SET_MEM_TABLE, {1, 0, 0}, 0)).ok());
  // Config: size field must match, and at most 256 bytes.
  std::vector<uint8_t> config(12 + 8, 0);
  config[4] = 4;
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_GET_CONFIG, config)).ok());
  std::vector<uint8_t> huge(12 + 300, 0);
  uint32_t s = 300;
  std::memcpy(huge.data() + 4, &s, 4);
  EXPECT_FALSE(ValidateRequest(Make(VHOST_USER_SET_CONFIG, huge)).ok());
}

TEST(MessageTest, ValidateReply) {
  Message m = Make(VHOST_USER_GET_FEATURES, Bytes(uint64_t{7}), 0, kBackendReplyFlags);
  EXPECT_TRUE(ValidateReply(m, VHOST_USER_GET_FEATURES, 8).ok());
  EXPECT_FALSE(ValidateReply(m, VHOST_USER_GET_PROTOCOL_FEATURES, 8).ok());
  EXPECT_FALSE(ValidateReply(m, VHOST_USER_GET_FEATURES, 4).ok());
  m.flags = kBackendReplyFlags | VHOST_USER_NEED_REPLY_MASK;
  EXPECT_FALSE(ValidateReply(m, VHOST_USER_GET_FEATURES, 8).ok());
  m.flags = VHOST_USER_VERSION;
  EXPECT_FALSE(ValidateReply(m, VHOST_USER_GET_FEATURES, 8).ok());
}

TEST(MessageTest, RequestNames) {
  EXPECT_STREQ(RequestName(VHOST_USER_GET_FEATURES), "VHOST_USER_GET_FEATURES");
  EXPECT_STREQ(RequestName(VHOST_USER_GET_STATUS), "VHOST_USER_GET_STATUS");
  EXPECT_STREQ(RequestName(VHOST_USER_GET_CONFIG), "VHOST_USER_GET_CONFIG");
  EXPECT_STREQ(RequestName(1000), "VHOST_USER_UNKNOWN");
}

}  // namespace
}  // namespace vsockd::vhost_user
