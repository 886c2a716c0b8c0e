// The shim's SOCK_SEQPACKET: an unmodified python3 host program using
// socket(AF_VSOCK, SOCK_SEQPACKET) through libvsock_preload.so, against the real vsockd
// (--run-dir) and a virtual guest (vguest library) with a SEQPACKET echo, and host loopback
// between two shimmed sockets. Message boundaries and MSG_TRUNC must come out as AF_VSOCK
// gives them.
//
// HARD RULE: python3 only ever runs under no_vsock_guard (socket(AF_VSOCK) -> EACCES), so a
// shim that failed to load fails the test instead of touching this machine's vsock.
#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tests/integration/harness.h"
#include "vguest/guest.h"
#include "vsock/packet.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;

class SeqpacketShimTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(PathExists(ShimLibrary())) << ShimLibrary();
    ASSERT_TRUE(daemon_.Start().ok()) << daemon_.Log();
    ASSERT_TRUE(WaitFor([&] { return UnixListening(run_dir_ + "/cid_3.seqpacket"); }))
        << daemon_.Log();
    vguest::GuestOptions options;
    options.socket_path = daemon_.socket_path();
    auto guest = loop_.Call([&] { return vguest::Guest::Attach(loop_.loop(), options); });
    ASSERT_TRUE(guest.ok()) << guest.error().ToString() << "\n" << daemon_.Log();
    guest_ = std::move(*guest);
    // Guest port 9000: a SEQPACKET echo (each message back as one message).
    auto st = loop_.Call([&] {
      return guest_->Listen(
          9000,
          [](vguest::Stream* s) {
            s->on_message = [s](std::span<const uint8_t> m, uint32_t) {
              (void)s->WriteMessage(m);  // small messages, one at a time: no EAGAIN here
            };
          },
          vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
    });
    ASSERT_TRUE(st.ok()) << st.error().ToString();
  }
  void TearDown() override {
    loop_.Call([&] {
      guest_.reset();
      return 0;
    });
  }

  RunResult Python(const std::string& program) {
    std::vector<std::string> argv = Shimmed(run_dir_);
    argv.push_back("python3");
    argv.push_back("-c");
    argv.push_back(program);
    return RunCommand(ShellLine(argv));
  }

  TempDir dir_;
  std::string run_dir_ = dir_.File("run");
  Daemon daemon_{dir_, 3, {"--run-dir", run_dir_}};
  LoopThread loop_;
  std::unique_ptr<vguest::Guest> guest_;
};

TEST_F(SeqpacketShimTest, PythonClientKeepsMessageBoundariesThroughVsockd) {
  auto r = Python(
      "import socket\n"
      "s = socket.socket(socket.AF_VSOCK, socket.SOCK_SEQPACKET)\n"
      "s.settimeout(20)\n"
      "s.connect((3, 9000))\n"
      "print('type', s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_SEQPACKET)\n"
      "print('peer', s.getpeername())\n"
      "s.send(b'one'); s.send(b'two' * 1000); s.send(b'three')\n"
      "print('m1', s.recv(65536))\n"
      "print('m2', len(s.recv(65536)))\n"
      "print('m3', s.recv(65536))\n"
      "s.send(b'x' * 100)\n"
      "data, anc, flags, addr = s.recvmsg(10)\n"
      "print('trunc', data, bool(flags & socket.MSG_TRUNC))\n"
      "s.send(b'after')\n"
      "print('next', s.recv(100))\n"
      "try:\n"
      "    socket.socket(socket.AF_VSOCK, socket.SOCK_SEQPACKET).connect((3, 9001))\n"
      "except ConnectionResetError:\n"
      "    print('refused as AF_VSOCK')\n");
  EXPECT_EQ(r.exit_code, 0) << r.output << "\n" << daemon_.Log();
  EXPECT_NE(r.output.find("type True"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("peer (3, 9000)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("m1 b'one'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("m2 3000"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("m3 b'three'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("trunc b'xxxxxxxxxx' True"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("next b'after'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("refused as AF_VSOCK"), std::string::npos) << r.output;
}

TEST_F(SeqpacketShimTest, PythonServerHearsAGuestSeqpacketConnect) {
  Subprocess server;
  std::vector<std::string> argv = Shimmed(run_dir_);
  argv.push_back("python3");
  argv.push_back("-c");
  argv.push_back(
      "import socket\n"
      "s = socket.socket(socket.AF_VSOCK, socket.SOCK_SEQPACKET)\n"
      "s.bind((socket.VMADDR_CID_ANY, 9100)); s.listen()\n"
      "c, peer = s.accept()\n"
      "print('from', peer[0])\n"
      "a = c.recv(100); b = c.recv(100)\n"
      "print('got', a, b)\n"
      "c.send(b'bye')\n"
      "c.recv(1)\n");  // waits for the guest's close
  ASSERT_TRUE(server.Start(argv, dir_.File("server.log")).ok());
  ASSERT_TRUE(WaitFor([&] { return UnixListening(run_dir_ + "/host_9100.seqpacket"); }, 20s))
      << server.Log();
  EXPECT_FALSE(PathExists(run_dir_ + "/host_9100"));  // the stream name stays free

  std::mutex mu;
  std::vector<std::string> received;
  vguest::Stream* stream = nullptr;
  std::atomic<bool> connected{false};
  loop_.Call([&] {
    guest_->Connect(
        9100,
        [&](vguest::Stream* s, const Status& st) {
          if (!st.ok()) return;
          stream = s;
          s->on_message = [&](std::span<const uint8_t> m, uint32_t) {
            std::lock_guard lock(mu);
            received.emplace_back(m.begin(), m.end());
          };
          static const uint8_t kA[] = {'h', 'i'};
          static const uint8_t kB[] = {'t', 'h', 'e', 'r', 'e'};
          (void)s->WriteMessage(kA);
          connected = true;
          // The second after the first is out (WriteMessage is one message at a time).
          s->on_writable = [s] {
            (void)s->WriteMessage(kB);
            s->on_writable = nullptr;
          };
          if (s->message_backlog() == 0) {
            (void)s->WriteMessage(kB);
            s->on_writable = nullptr;
          }
        },
        vsock::VMADDR_CID_HOST, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
    return 0;
  });
  ASSERT_TRUE(WaitFor(
      [&] {
        std::lock_guard lock(mu);
        return !received.empty();
      },
      20s))
      << server.Log() << "\n"
      << daemon_.Log();
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(received[0], "bye");
  }
  loop_.Call([&] {
    if (stream != nullptr) stream->Close();
    return 0;
  });
  ASSERT_TRUE(WaitFor([&] { return !server.Running(); }, 20s)) << server.Log();
  std::string log = server.Log();
  EXPECT_NE(log.find("from 3"), std::string::npos) << log;
  EXPECT_NE(log.find("got b'hi' b'there'"), std::string::npos) << log;
  EXPECT_EQ(log.find("Traceback"), std::string::npos) << log;
}

TEST_F(SeqpacketShimTest, HostLoopbackUsesTheSeqpacketFiles) {
  auto r = Python(
      "import socket, os\n"
      "s = socket.socket(socket.AF_VSOCK, socket.SOCK_SEQPACKET)\n"
      "s.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY)); s.listen()\n"
      "port = s.getsockname()[1]\n"
      "print('file', os.path.exists(os.environ['VSOCKD_RUN_DIR'] + '/host_%d.seqpacket' % port))\n"
      "c = socket.socket(socket.AF_VSOCK, socket.SOCK_SEQPACKET)\n"
      "c.connect((socket.VMADDR_CID_HOST, port)); c.send(b'ab'); c.send(b'cd')\n"
      "a, peer = s.accept()\n"
      "print('msgs', a.recv(10), a.recv(10))\n"
      "t = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n"
      "try:\n"
      "    t.connect((socket.VMADDR_CID_HOST, port))\n"
      "except ConnectionResetError:\n"
      "    print('stream does not reach it')\n");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("file True"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("msgs b'ab' b'cd'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("stream does not reach it"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace vsockd::testing
