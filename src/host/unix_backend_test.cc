#include "host/unix_backend.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "base/unix_socket.h"
#include "host/caller_name.h"
#include "host/connect_command.h"

namespace vsockd::host {
namespace {

using std::chrono::milliseconds;

// Stands in for vsock::Device: records connect requests; the test answers them.
class FakeConnector : public GuestConnector {
 public:
  struct Request {
    uint32_t port;
    Done done;
  };

  Result<uint64_t> ConnectToGuest(uint32_t guest_port, Done done) override {
    if (fail_next) {
      fail_next = false;
      return MakeError(ENODEV, "no vsock device");
    }
    uint64_t id = next_id++;
    if (answer_synchronously) {
      last_stream = done(Result<uint32_t>(sync_host_port));
      return id;
    }
    pending[id] = Request{guest_port, std::move(done)};
    return id;
  }

  void CancelConnectToGuest(uint64_t id) override {
    cancelled.push_back(id);
    pending.erase(id);
  }

  // Answers request `id` as the device would.
  std::optional<vsock::HostStream> Answer(uint64_t id, Result<uint32_t> result) {
    auto it = pending.find(id);
    EXPECT_NE(it, pending.end());
    if (it == pending.end()) return std::nullopt;
    Done done = std::move(it->second.done);
    pending.erase(it);
    return done(std::move(result));
  }

  uint64_t only_id() const {
    EXPECT_EQ(pending.size(), 1u);
    return pending.empty() ? 0 : pending.begin()->first;
  }

  std::map<uint64_t, Request> pending;
  std::vector<uint64_t> cancelled;
  uint64_t next_id = 100;
  bool fail_next = false;
  bool answer_synchronously = false;
  uint32_t sync_host_port = 0;
  std::optional<vsock::HostStream> last_stream;
};

class UnixBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "vsockd_host_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok());
    loop_ = std::move(*loop);
    options_.uds_path = dir_ + "/v.sock";
  }

  void TearDown() override {
    backend_.reset();
    std::string cmd = "rm -rf '" + dir_ + "'";
    (void)std::system(cmd.c_str());
  }

  void StartBackend() {
    backend_ = std::make_unique<UnixBackend>(loop_.get(), &fake_, options_);
    Status s = backend_->Start();
    ASSERT_TRUE(s.ok()) << s.error().ToString();
  }

  // Runs the loop until `pred` holds; a generous cap keeps a broken test from hanging.
  bool RunUntil(const std::function<bool()>& pred) {
    for (int i = 0; i < 2000 && !pred(); ++i) loop_->RunOnce(5);
    return pred();
  }
  void RunIterations(int n) {
    for (int i = 0; i < n; ++i) loop_->RunOnce(0);
  }

  Fd Client() {
    auto fd = ConnectUnix(options_.uds_path, /*nonblocking=*/true);
    EXPECT_TRUE(fd.ok()) << fd.error().ToString();
    return fd.ok() ? std::move(*fd) : Fd();
  }

  static void Send(const Fd& fd, std::string_view data) {
    ASSERT_EQ(::send(fd.get(), data.data(), data.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(data.size()));
  }

  // Non-blocking read of whatever is there; sets *eof on end of stream.
  static std::string ReadAvailable(const Fd& fd, bool* eof = nullptr, int* error = nullptr) {
    std::string out;
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(fd.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        out.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0 && eof != nullptr) *eof = true;
      if (n < 0 && errno != EAGAIN && error != nullptr) *error = errno;
      return out;
    }
  }

  // Runs the loop until the client has read a whole reply line and (if wanted) EOF.
  std::string ReadReplyUntilEof(const Fd& fd) {
    std::string got;
    bool eof = false;
    int error = 0;
    EXPECT_TRUE(RunUntil([&] {
      got += ReadAvailable(fd, &eof, &error);
      return eof || error != 0;
    }));
    EXPECT_EQ(error, 0) << std::strerror(error);
    EXPECT_TRUE(eof);
    return got;
  }

  static void ExpectErrLine(const std::string& line, std::string_view must_contain) {
    EXPECT_EQ(line.rfind("ERR ", 0), 0u) << line;
    ASSERT_FALSE(line.empty());
    EXPECT_EQ(line.back(), '\n') << line;
    EXPECT_EQ(line.find('\n'), line.size() - 1) << "one line only: " << line;
    EXPECT_FALSE(ContainsOk(line)) << line;
    EXPECT_LE(line.size(), 64u) << "Kata's dialer reads at most 64 bytes: " << line;
    EXPECT_NE(line.find(must_contain), std::string::npos) << line;
  }

  std::string dir_;
  std::unique_ptr<EventLoop> loop_;
  UnixBackendOptions options_;
  FakeConnector fake_;
  std::unique_ptr<UnixBackend> backend_;
};

// ---------------------------------------------------------------- host -> guest

TEST_F(UnixBackendTest, AcceptedConnectRepliesOkAndKeepsPayload) {
  StartBackend();
  Fd client = Client();
  Send(client, "CONNECT 52\nhello");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  uint64_t id = fake_.only_id();
  EXPECT_EQ(fake_.pending[id].port, 52u);

  auto stream = fake_.Answer(id, Result<uint32_t>(1073741824u));
  ASSERT_TRUE(stream.has_value());
  EXPECT_EQ(stream->prefix, "hello");
  EXPECT_TRUE(stream->fd.valid());
  EXPECT_EQ(backend_->handshakes(), 0u);
  EXPECT_EQ(ReadAvailable(client), "OK 1073741824\n");

  // The same socket now carries the connection both ways.
  Send(stream->fd, "from guest");
  EXPECT_EQ(ReadAvailable(client), "from guest");
  Send(client, "more from host");
  EXPECT_EQ(ReadAvailable(stream->fd), "more from host");
  // The backend no longer watches the fd: running the loop must not consume its data.
  Send(client, "x");
  RunIterations(3);
  EXPECT_EQ(ReadAvailable(stream->fd), "x");
}

TEST_F(UnixBackendTest, GuestPortReplyMode) {
  options_.ok_reply = OkReply::kGuestPort;
  StartBackend();
  Fd client = Client();
  Send(client, "connect 5000\r\n");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  auto stream = fake_.Answer(fake_.only_id(), Result<uint32_t>(1073741999u));
  ASSERT_TRUE(stream.has_value());
  EXPECT_EQ(stream->prefix, "");
  EXPECT_EQ(ReadAvailable(client), "OK 5000\n");
}

TEST_F(UnixBackendTest, CommandSplitAcrossManyWrites) {
  StartBackend();
  Fd client = Client();
  for (char c : std::string("CoNnEcT  4242")) {
    Send(client, std::string(1, c));
    RunIterations(2);
    EXPECT_TRUE(fake_.pending.empty());
  }
  Send(client, "\n");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  EXPECT_EQ(fake_.pending.begin()->second.port, 4242u);
}

TEST_F(UnixBackendTest, PayloadSentBeforeOkIsNotLost) {
  StartBackend();
  Fd client = Client();
  Send(client, "CONNECT 7\nfirst");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  Send(client, "second");  // written while the guest has not answered yet
  RunIterations(3);
  auto stream = fake_.Answer(fake_.only_id(), Result<uint32_t>(9u));
  ASSERT_TRUE(stream.has_value());
  std::string all = stream->prefix + ReadAvailable(stream->fd);
  EXPECT_EQ(all, "firstsecond");
}

TEST_F(UnixBackendTest, RefusedConnectSendsErrAndCloses) {
  StartBackend();
  Fd client = Client();
  Send(client, "CONNECT 1234\npipelined payload");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  auto stream = fake_.Answer(fake_.only_id(), MakeError(ECONNREFUSED, "RST from guest"));
  EXPECT_FALSE(stream.has_value());
  std::string reply = ReadReplyUntilEof(client);
  ExpectErrLine(reply, "refused");
  EXPECT_NE(reply.find("1234"), std::string::npos);
  EXPECT_EQ(backend_->handshakes(), 0u);
}

TEST_F(UnixBackendTest, GuestTimeoutSendsErr) {
  StartBackend();
  Fd client = Client();
  Send(client, "CONNECT 9\n");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  (void)fake_.Answer(fake_.only_id(), MakeError(ETIMEDOUT, "no RESPONSE"));
  ExpectErrLine(ReadReplyUntilEof(client), "did not answer");
}

TEST_F(UnixBackendTest, OtherGuestErrorsNeverLookLikeOk) {
  StartBackend();
  Fd client = Client();
  Send(client, "CONNECT 9\n");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  // EPIPE's text is "Broken pipe": must not reach the client as "...OK...".
  (void)fake_.Answer(fake_.only_id(), MakeError(EPIPE, "took the token"));
  ExpectErrLine(ReadReplyUntilEof(client), "guest port 9 (EPIPE)");
}

TEST_F(UnixBackendTest, SynchronousConnectFailureSendsErr) {
  StartBackend();
  fake_.fail_next = true;
  Fd client = Client();
  Send(client, "CONNECT 9\n");
  ExpectErrLine(ReadReplyUntilEof(client), "guest port 9 (ENODEV)");
  EXPECT_EQ(backend_->handshakes(), 0u);
}

TEST_F(UnixBackendTest, AnswerFromInsideConnectToGuestWorks) {
  StartBackend();
  fake_.answer_synchronously = true;
  fake_.sync_host_port = 1073741824u;
  Fd client = Client();
  Send(client, "CONNECT 9\nabc");
  ASSERT_TRUE(RunUntil([&] { return fake_.last_stream.has_value(); }));
  EXPECT_EQ(fake_.last_stream->prefix, "abc");
  EXPECT_EQ(ReadAvailable(client), "OK 1073741824\n");
  EXPECT_TRUE(fake_.cancelled.empty());
  EXPECT_EQ(backend_->handshakes(), 0u);
}

TEST_F(UnixBackendTest, MalformedCommandsGetErr) {
  StartBackend();
  struct Case {
    std::string input;
    std::string reason;
  };
  for (const Case& c : std::vector<Case>{{"HELLO 5\n", "malformed"},
                                         {"CONNECT 5x\n", "invalid port"},
                                         {"CONNECT 4294967296\n", "out of range"},
                                         {"CONNECT\n", "missing port"},
                                         {"OK 5\n", "malformed"},
                                         {std::string(100, 'A'), "too long"},
                                         {"CONNECT 1" + std::string(80, '0') + "\n", "too long"}}) {
    Fd client = Client();
    Send(client, c.input);
    std::string reply = ReadReplyUntilEof(client);
    ExpectErrLine(reply, c.reason);
    EXPECT_TRUE(fake_.pending.empty()) << c.input;
  }
  EXPECT_EQ(backend_->handshakes(), 0u);
}

TEST_F(UnixBackendTest, ClientThatNeverFinishesTheLineTimesOut) {
  options_.command_timeout = milliseconds(20);
  StartBackend();
  Fd client = Client();
  Send(client, "CONNECT 5");
  ExpectErrLine(ReadReplyUntilEof(client), "timeout");
  EXPECT_TRUE(fake_.pending.empty());
  EXPECT_EQ(backend_->handshakes(), 0u);
}

TEST_F(UnixBackendTest, EndOfStreamBeforeNewlineIsAnError) {
  StartBackend();
  Fd client = Client();
  Send(client, "CONNECT 5");
  ASSERT_EQ(::shutdown(client.get(), SHUT_WR), 0);
  ExpectErrLine(ReadReplyUntilEof(client), "end of stream");
  EXPECT_TRUE(fake_.pending.empty());
}

TEST_F(UnixBackendTest, ClientHangupWhileWaitingCancelsTheGuestConnect) {
  StartBackend();
  Fd client = Client();
  Send(client, "CONNECT 77\n");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  uint64_t id = fake_.only_id();
  client.Reset();
  ASSERT_TRUE(RunUntil([&] { return !fake_.cancelled.empty(); }));
  EXPECT_EQ(fake_.cancelled, std::vector<uint64_t>{id});
  EXPECT_EQ(backend_->handshakes(), 0u);
}

TEST_F(UnixBackendTest, HalfCloseWhileWaitingKeepsTheConnect) {
  StartBackend();
  Fd client = Client();
  Send(client, "CONNECT 77\nbye");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  ASSERT_EQ(::shutdown(client.get(), SHUT_WR), 0);
  RunIterations(5);
  ASSERT_EQ(fake_.pending.size(), 1u);
  EXPECT_TRUE(fake_.cancelled.empty());
  auto stream = fake_.Answer(fake_.only_id(), Result<uint32_t>(1u));
  ASSERT_TRUE(stream.has_value());
  EXPECT_EQ(stream->prefix, "bye");
  EXPECT_EQ(ReadAvailable(client), "OK 1\n");
}

TEST_F(UnixBackendTest, ClientGoneBeforeOkAbandonsTheConnection) {
  StartBackend();
  Fd client = Client();
  Send(client, "CONNECT 77\n");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  uint64_t id = fake_.only_id();
  client.Reset();
  // The guest answers before the loop has seen the hangup: writing OK fails.
  auto stream = fake_.Answer(id, Result<uint32_t>(1u));
  EXPECT_FALSE(stream.has_value());
  EXPECT_EQ(backend_->handshakes(), 0u);
  EXPECT_TRUE(fake_.cancelled.empty());  // the device already finished this connect
}

TEST_F(UnixBackendTest, TooManyHandshakesAreRejected) {
  options_.max_handshakes = 1;
  StartBackend();
  Fd first = Client();
  ASSERT_TRUE(RunUntil([&] { return backend_->handshakes() == 1; }));
  Fd second = Client();
  ExpectErrLine(ReadReplyUntilEof(second), "too many");
  // The first one is still served.
  Send(first, "CONNECT 3\n");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
}

TEST_F(UnixBackendTest, ShutdownCancelsPendingAndRemovesTheSocketFile) {
  StartBackend();
  struct stat st;
  ASSERT_EQ(::lstat(options_.uds_path.c_str(), &st), 0);
  Fd client = Client();
  Send(client, "CONNECT 8\n");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  uint64_t id = fake_.only_id();
  backend_.reset();
  EXPECT_EQ(fake_.cancelled, std::vector<uint64_t>{id});
  EXPECT_NE(::lstat(options_.uds_path.c_str(), &st), 0);
  bool eof = false;
  ReadAvailable(client, &eof);
  EXPECT_TRUE(eof);
}

TEST_F(UnixBackendTest, ShutdownLeavesASuccessorsSocketAlone) {
  StartBackend();
  // Another instance took the path over (ListenUnix replaces stale sockets).
  auto successor = ListenUnix(options_.uds_path);
  ASSERT_TRUE(successor.ok());
  backend_.reset();
  struct stat st;
  EXPECT_EQ(::lstat(options_.uds_path.c_str(), &st), 0);
}

TEST_F(UnixBackendTest, StartReplacesAStaleSocketFile) {
  {
    auto stale = ListenUnix(options_.uds_path);
    ASSERT_TRUE(stale.ok());
  }  // closed: the file stays behind, as after a crash
  StartBackend();
  Fd client = Client();
  Send(client, "CONNECT 1\n");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
}

// ---------------------------------------------------------------- guest -> host

class GuestToHostTest : public UnixBackendTest {
 protected:
  vsock::ConnectionInfo Info(uint32_t host_port) {
    vsock::ConnectionInfo info;
    info.guest_cid = 3;
    info.guest_port = 50000;
    info.host_port = host_port;
    return info;
  }

  // Starts a connect and records its outcome.
  void Connect(uint32_t host_port, uint16_t type = vsock::VIRTIO_VSOCK_TYPE_STREAM) {
    called_ = false;
    vsock::ConnectionInfo info = Info(host_port);
    info.type = type;
    pending_ = backend_->ConnectToHost(info, [this](Result<vsock::HostStream> r) {
      called_ = true;
      result_ = std::move(r);
    });
  }

  bool called_ = false;
  std::optional<Result<vsock::HostStream>> result_;
  std::unique_ptr<vsock::PendingConnect> pending_;
};

TEST_F(GuestToHostTest, PathIsUdsPathUnderscorePort) {
  StartBackend();
  EXPECT_EQ(backend_->HostPortPath(1234), options_.uds_path + "_1234");
  EXPECT_EQ(backend_->HostPortPath(4294967295u), options_.uds_path + "_4294967295");
}

TEST_F(GuestToHostTest, ConnectsToAnExistingListenerAsynchronously) {
  StartBackend();
  auto listener = ListenUnix(options_.uds_path + "_1234");
  ASSERT_TRUE(listener.ok());
  Connect(1234);
  EXPECT_FALSE(called_) << "done must not run inside ConnectToHost";
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_TRUE(result_->ok()) << result_->error().ToString();
  vsock::HostStream& stream = result_->value();
  EXPECT_EQ(stream.prefix, "");
  Fd server(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  ASSERT_TRUE(server.valid()) << std::strerror(errno);
  Send(stream.fd, "hi host");
  EXPECT_EQ(ReadAvailable(server), "hi host");
}

TEST_F(GuestToHostTest, WorksWithoutStartAndCallbackMayDropTheHandle) {
  backend_ = std::make_unique<UnixBackend>(loop_.get(), &fake_, options_);  // no Start()
  auto listener = ListenUnix(options_.uds_path + "_5");
  ASSERT_TRUE(listener.ok());
  bool called = false;
  std::unique_ptr<vsock::PendingConnect> handle;
  handle = backend_->ConnectToHost(Info(5), [&](Result<vsock::HostStream> r) {
    called = true;
    EXPECT_TRUE(r.ok());
    handle.reset();  // the device forgets the handle from inside the callback
  });
  ASSERT_TRUE(RunUntil([&] { return called; }));
  EXPECT_EQ(handle, nullptr);
}

TEST_F(GuestToHostTest, MissingListenerFails) {
  StartBackend();
  Connect(999);
  EXPECT_FALSE(called_);
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_FALSE(result_->ok());
  EXPECT_EQ(result_->error().code, ENOENT) << result_->error().ToString();
  EXPECT_NE(result_->error().context.find("_999"), std::string::npos);
}

TEST_F(GuestToHostTest, SocketFileWithoutListenerIsRefused) {
  StartBackend();
  {
    auto gone = ListenUnix(options_.uds_path + "_77");
    ASSERT_TRUE(gone.ok());
  }  // the file stays, nobody listens
  Connect(77);
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_FALSE(result_->ok());
  EXPECT_EQ(result_->error().code, ECONNREFUSED) << result_->error().ToString();
}

TEST_F(GuestToHostTest, DestroyingTheHandleSuppressesTheCallback) {
  StartBackend();
  auto listener = ListenUnix(options_.uds_path + "_1234");
  ASSERT_TRUE(listener.ok());
  Connect(1234);
  pending_.reset();
  RunIterations(5);
  EXPECT_FALSE(called_);
}

TEST_F(GuestToHostTest, BacklogFullIsRetriedUntilTheListenerAccepts) {
  StartBackend();
  std::string path = options_.uds_path + "_6000";
  // Backlog 0 holds exactly one unaccepted connection; the next connect gets EAGAIN.
  auto listener = ListenUnix(path, /*backlog=*/0);
  ASSERT_TRUE(listener.ok());
  auto filler = ConnectUnix(path, /*nonblocking=*/true);
  ASSERT_TRUE(filler.ok()) << filler.error().ToString();
  auto probe = ConnectUnix(path, /*nonblocking=*/true);
  if (probe.ok() || probe.error().code != EAGAIN) {
    GTEST_SKIP() << "this kernel does not report a full AF_UNIX backlog as EAGAIN";
  }
  Connect(6000);
  for (int i = 0; i < 10; ++i) loop_->RunOnce(2);  // several retries happen here
  EXPECT_FALSE(called_) << (result_ && !result_->ok() ? result_->error().ToString() : "");
  // Make room: accept the filler. The next retry gets through.
  Fd accepted(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(accepted.valid());
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_TRUE(result_->ok()) << result_->error().ToString();
}

TEST_F(GuestToHostTest, BacklogFullGivesUpWithTimeout) {
  options_.host_connect_timeout = milliseconds(30);
  StartBackend();
  std::string path = options_.uds_path + "_6001";
  auto listener = ListenUnix(path, /*backlog=*/0);
  ASSERT_TRUE(listener.ok());
  auto filler = ConnectUnix(path, /*nonblocking=*/true);
  ASSERT_TRUE(filler.ok());
  auto probe = ConnectUnix(path, /*nonblocking=*/true);
  if (probe.ok() || probe.error().code != EAGAIN) {
    GTEST_SKIP() << "this kernel does not report a full AF_UNIX backlog as EAGAIN";
  }
  Connect(6001);
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_FALSE(result_->ok());
  EXPECT_EQ(result_->error().code, ETIMEDOUT) << result_->error().ToString();
}

// ---------------------------------------------------------------- caller names, run dir

TEST(CallerNameTest, FormatAndParseRoundTrip) {
  std::string name = FormatCallerName("1234.abc", 3, 50000, 9999);
  EXPECT_EQ(name, "vsockd/1234.abc/3/50000/9999");
  CallerName parsed;
  ASSERT_TRUE(ParseCallerName(name, &parsed));
  EXPECT_EQ(parsed.instance, "1234.abc");
  EXPECT_EQ(parsed.guest_cid, 3u);
  EXPECT_EQ(parsed.guest_port, 50000u);
  EXPECT_EQ(parsed.host_port, 9999u);
  ASSERT_TRUE(ParseCallerName(FormatCallerName("x", 4294967294u, 4294967295u, 0), &parsed));
  EXPECT_EQ(parsed.guest_cid, 4294967294u);
  EXPECT_EQ(parsed.guest_port, 4294967295u);
  EXPECT_EQ(parsed.host_port, 0u);
}

TEST(CallerNameTest, RejectsAnythingElse) {
  CallerName parsed;
  for (const char* bad :
       {"", "vsockd/", "vsockd//3/1/2", "vsockd/i/3/1", "vsockd/i/3/1/2/", "vsockd/i/3/1/2/5",
        "vsockd/i/x/1/2", "vsockd/i/3/-1/2", "vsockd/i/4294967296/1/2", "vsockd/i/3/1/99999999999",
        "vsockd/i/3//2", "other/i/3/1/2", "vsockd/i/3/1/2\n"}) {
    EXPECT_FALSE(ParseCallerName(bad, &parsed)) << bad;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, "vsockd/i/3/1/2");  // a path, not an abstract name
  EXPECT_FALSE(ParseCallerAddress(&addr, sizeof addr, &parsed));
  EXPECT_FALSE(ParseCallerAddress(&addr, sizeof(sa_family_t), &parsed));  // unnamed peer
}

TEST_F(UnixBackendTest, ExtraListenPathsSpeakTheSameProtocol) {
  options_.listen_paths = {dir_ + "/cid_3"};
  StartBackend();
  auto client = ConnectUnix(dir_ + "/cid_3", /*nonblocking=*/true);
  ASSERT_TRUE(client.ok()) << client.error().ToString();
  Send(*client, "CONNECT 77\n");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  EXPECT_EQ(fake_.pending[fake_.only_id()].port, 77u);
  auto stream = fake_.Answer(fake_.only_id(), Result<uint32_t>(1073741825u));
  ASSERT_TRUE(stream.has_value());
  EXPECT_EQ(ReadAvailable(*client), "OK 1073741825\n");
  // The hybrid path still works next to it.
  Fd plain = Client();
  Send(plain, "CONNECT 78\n");
  ASSERT_TRUE(RunUntil([&] { return fake_.pending.size() == 1; }));
  EXPECT_EQ(fake_.pending[fake_.only_id()].port, 78u);
  // Both files go away with the backend.
  backend_->Shutdown();
  struct stat st;
  EXPECT_NE(::lstat((dir_ + "/cid_3").c_str(), &st), 0);
  EXPECT_NE(::lstat(options_.uds_path.c_str(), &st), 0);
}

TEST_F(UnixBackendTest, ListenPathsWithoutUdsPath) {
  options_.uds_path.clear();
  options_.listen_paths = {dir_ + "/cid_9"};
  StartBackend();
  struct stat st;
  EXPECT_EQ(::lstat((dir_ + "/cid_9").c_str(), &st), 0);
}

TEST_F(UnixBackendTest, StartFailureLeavesNothingListening) {
  options_.listen_paths = {dir_ + "/no-such-dir/cid_3"};
  backend_ = std::make_unique<UnixBackend>(loop_.get(), &fake_, options_);
  EXPECT_FALSE(backend_->Start().ok());
  struct stat st;
  EXPECT_NE(::lstat(options_.uds_path.c_str(), &st), 0) << "the first listener was undone";
}

TEST_F(GuestToHostTest, CandidatePathsInOrder) {
  options_.host_path_prefixes = {dir_ + "/host_"};
  StartBackend();
  EXPECT_EQ(backend_->HostPortPaths(5),
            (std::vector<std::string>{options_.uds_path + "_5", dir_ + "/host_5"}));
  EXPECT_EQ(backend_->HostPortPath(5), options_.uds_path + "_5");
}

TEST_F(GuestToHostTest, SeqpacketPathsAndListeners) {
  options_.host_path_prefixes = {dir_ + "/host_"};
  options_.listen_paths = {dir_ + "/cid_3"};
  StartBackend();
  EXPECT_EQ(backend_->HostPortPaths(5, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET),
            (std::vector<std::string>{options_.uds_path + "_5", options_.uds_path + "_5.seqpacket",
                                      dir_ + "/host_5", dir_ + "/host_5.seqpacket"}));
  EXPECT_TRUE(backend_->HostPortPaths(5, 7).empty());
  EXPECT_EQ(backend_->ListenPaths(), (std::vector<std::string>{options_.uds_path, dir_ + "/cid_3",
                                                               options_.uds_path + ".seqpacket",
                                                               dir_ + "/cid_3.seqpacket"}));
  int type = 0;
  socklen_t len = sizeof type;
  auto c = ConnectUnix(options_.uds_path + ".seqpacket", false, SOCK_SEQPACKET);
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  ASSERT_EQ(::getsockopt(c->get(), SOL_SOCKET, SO_TYPE, &type, &len), 0);
  EXPECT_EQ(type, SOCK_SEQPACKET);
}

TEST_F(GuestToHostTest, FallsBackToTheRunDirWhenTheHybridPathIsMissing) {
  options_.host_path_prefixes = {dir_ + "/host_"};
  StartBackend();
  auto shared = ListenUnix(dir_ + "/host_1234");
  ASSERT_TRUE(shared.ok());
  Connect(1234);
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_TRUE(result_->ok()) << result_->error().ToString();
  Fd server(::accept4(shared->get(), nullptr, nullptr, SOCK_CLOEXEC));
  EXPECT_TRUE(server.valid());
}

TEST_F(GuestToHostTest, HybridPathWinsWhenBothExist) {
  options_.host_path_prefixes = {dir_ + "/host_"};
  StartBackend();
  auto hybrid = ListenUnix(options_.uds_path + "_1234");
  auto shared = ListenUnix(dir_ + "/host_1234");
  ASSERT_TRUE(hybrid.ok() && shared.ok());
  Connect(1234);
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_TRUE(result_->ok()) << result_->error().ToString();
  Fd server(::accept4(hybrid->get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  EXPECT_TRUE(server.valid());
  Fd other(::accept4(shared->get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  EXPECT_FALSE(other.valid());
}

// A guest SEQPACKET connect reaches a SOCK_SEQPACKET listener on the plain hybrid path...
TEST_F(GuestToHostTest, SeqpacketReachesASeqpacketListenerOnThePlainPath) {
  StartBackend();
  auto plain = ListenUnix(options_.uds_path + "_77", 16, true, SOCK_SEQPACKET);
  ASSERT_TRUE(plain.ok());
  Connect(77, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_TRUE(result_->ok()) << result_->error().ToString();
  EXPECT_EQ(SocketType((*result_)->fd.get()), SOCK_SEQPACKET);
  Fd server(::accept4(plain->get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  EXPECT_TRUE(server.valid());
}

// ...and falls back to ".seqpacket" when the plain path is a stream listener (or missing).
TEST_F(GuestToHostTest, SeqpacketFallsBackPastAStreamListener) {
  StartBackend();
  auto stream = ListenUnix(options_.uds_path + "_78");
  auto seq = ListenUnix(options_.uds_path + "_78.seqpacket", 16, true, SOCK_SEQPACKET);
  ASSERT_TRUE(stream.ok() && seq.ok());
  Connect(78, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_TRUE(result_->ok()) << result_->error().ToString();
  Fd server(::accept4(seq->get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  EXPECT_TRUE(server.valid());
  Fd wrong(::accept4(stream->get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  EXPECT_FALSE(wrong.valid());
}

TEST_F(GuestToHostTest, StaleHybridFileDoesNotFallBack) {
  options_.host_path_prefixes = {dir_ + "/host_"};
  StartBackend();
  { auto gone = ListenUnix(options_.uds_path + "_88"); }
  auto shared = ListenUnix(dir_ + "/host_88");
  ASSERT_TRUE(shared.ok());
  Connect(88);
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_FALSE(result_->ok());
  EXPECT_EQ(result_->error().code, ECONNREFUSED);
}

TEST_F(GuestToHostTest, NoCandidateExistsIsEnoent) {
  options_.uds_path.clear();
  options_.host_path_prefixes = {dir_ + "/a_", dir_ + "/b_"};
  StartBackend();
  Connect(1);
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_FALSE(result_->ok());
  EXPECT_EQ(result_->error().code, ENOENT);
  EXPECT_NE(result_->error().context.find("b_1"), std::string::npos);
}

TEST_F(GuestToHostTest, TheListenerSeesTheCallerName) {
  options_.instance_id = "42.beef";
  StartBackend();
  auto listener = ListenUnix(options_.uds_path + "_1234");
  ASSERT_TRUE(listener.ok());
  Connect(1234);
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_TRUE(result_->ok()) << result_->error().ToString();
  sockaddr_un peer{};
  socklen_t len = sizeof peer;
  Fd server(::accept4(listener->get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC));
  ASSERT_TRUE(server.valid());
  CallerName name;
  ASSERT_TRUE(ParseCallerAddress(&peer, len, &name));
  EXPECT_EQ(name.instance, "42.beef");
  EXPECT_EQ(name.guest_cid, 3u);
  EXPECT_EQ(name.guest_port, 50000u);
  EXPECT_EQ(name.host_port, 1234u);
}

TEST_F(GuestToHostTest, ATakenCallerNameStillConnects) {
  options_.instance_id = "43.beef";
  StartBackend();
  auto listener = ListenUnix(options_.uds_path + "_1234");
  ASSERT_TRUE(listener.ok());
  // Someone already holds the name this connect would bind.
  auto squatter = ListenUnix("@" + backend_->CallerNameFor(Info(1234)));
  ASSERT_TRUE(squatter.ok()) << squatter.error().ToString();
  Connect(1234);
  ASSERT_TRUE(RunUntil([&] { return called_; }));
  ASSERT_TRUE(result_->ok()) << result_->error().ToString();
  sockaddr_un peer{};
  socklen_t len = sizeof peer;
  Fd server(::accept4(listener->get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC));
  ASSERT_TRUE(server.valid());
  CallerName name;
  EXPECT_FALSE(ParseCallerAddress(&peer, len, &name)) << "unbound fallback";
}

TEST_F(GuestToHostTest, DefaultInstanceIdIsPidBased) {
  StartBackend();
  EXPECT_EQ(backend_->instance_id().rfind(std::to_string(::getpid()) + ".", 0), 0u)
      << backend_->instance_id();
  EXPECT_EQ(backend_->instance_id().find('/'), std::string::npos);
}

}  // namespace
}  // namespace vsockd::host
