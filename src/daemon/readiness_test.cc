#include "daemon/readiness.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "base/fd.h"
#include "base/unix_socket.h"

namespace vsockd::daemon {
namespace {

// A datagram socket bound at `name` ("@..." abstract), as systemd's notify socket.
Fd BindDgram(const std::string& name) {
  sockaddr_un addr;
  auto len = MakeUnixAddress(name, &addr);
  EXPECT_TRUE(len.ok());
  Fd s(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(s.valid());
  EXPECT_EQ(::bind(s.get(), reinterpret_cast<const sockaddr*>(&addr), len.ok() ? *len : 0), 0)
      << std::strerror(errno);
  return s;
}

std::string Receive(const Fd& s) {
  char buf[256];
  ssize_t n = ::recv(s.get(), buf, sizeof buf, MSG_DONTWAIT);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

class NotifySocketEnv {
 public:
  explicit NotifySocketEnv(const std::string& value) {
    ::setenv("NOTIFY_SOCKET", value.c_str(), 1);
  }
  ~NotifySocketEnv() { ::unsetenv("NOTIFY_SOCKET"); }
};

TEST(ReadinessTest, ReadyFdGetsOneLineThenEof) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  Fd rd(p[0]);
  ASSERT_TRUE(SignalReadyFd(p[1]).ok());
  char buf[16];
  ASSERT_EQ(::read(rd.get(), buf, sizeof buf), 6);
  EXPECT_EQ(std::string(buf, 6), "READY\n");
  EXPECT_EQ(::read(rd.get(), buf, sizeof buf), 0) << "the fd is closed after the line";
}

TEST(ReadinessTest, ReadyFdErrorsAreReported) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  ::close(p[0]);  // nobody reads: EPIPE (SIGPIPE is ignored below)
  auto old = ::signal(SIGPIPE, SIG_IGN);
  Status st = SignalReadyFd(p[1]);
  ::signal(SIGPIPE, old);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, EPIPE);
  EXPECT_TRUE(SignalReadyFd(-1).ok()) << "no --ready-fd: nothing to do";
}

TEST(ReadinessTest, NotifySocketPathAndAbstract) {
  EXPECT_TRUE(NotifySystemd("READY=1").ok()) << "unset: nothing to do";
  char dir[] = "/tmp/vsockd-ready-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/notify";
  const std::string pid = std::to_string(::getpid());
  {
    Fd s = BindDgram(path);
    NotifySocketEnv env(path);
    ASSERT_TRUE(NotifySystemd("READY=1").ok());
    EXPECT_EQ(Receive(s), "READY=1\nMAINPID=" + pid);
  }
  {
    const std::string abstract = "@vsockd-ready-test-" + pid;
    Fd s = BindDgram(abstract);
    NotifySocketEnv env(abstract);
    ASSERT_TRUE(NotifySystemd("STOPPING=1").ok());
    EXPECT_EQ(Receive(s), "STOPPING=1\nMAINPID=" + pid);
  }
  ::unlink(path.c_str());
  ::rmdir(dir);
}

TEST(ReadinessTest, BadNotifySocketIsAnError) {
  {
    NotifySocketEnv env("relative/path");
    Status st = NotifySystemd("READY=1");
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().code, EINVAL);
  }
  {
    NotifySocketEnv env("/nonexistent-dir-for-vsockd/notify");
    EXPECT_FALSE(NotifySystemd("READY=1").ok()) << "nobody listens there";
  }
}

}  // namespace
}  // namespace vsockd::daemon
