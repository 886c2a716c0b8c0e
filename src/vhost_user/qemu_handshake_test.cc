// Runs a real QEMU (qemu-system-x86_64, TCG, guest CPU never started: -S) against a Backend
// and checks that QEMU realizes vhost-user-vsock-pci through our backend: it must read the
// guest CID with GET_CONFIG and keep running, then go away cleanly on QMP "quit".
//
// Skipped when qemu-system-x86_64 is not on PATH, unless VSOCKD_REQUIRE_QEMU=1. Every wait
// is bounded, and QEMU is killed whatever happens (also if this process dies: PDEATHSIG).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "base/event_loop.h"
#include "base/unix_socket.h"
#include "vhost_user/backend.h"
#include "vhost_user/fake_device_for_test.h"

namespace vsockd::vhost_user {
namespace {

using Clock = std::chrono::steady_clock;

std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return {};
  std::string all(path);
  size_t start = 0;
  while (start <= all.size()) {
    size_t end = all.find(':', start);
    if (end == std::string::npos) end = all.size();
    std::string dir = all.substr(start, end - start);
    if (!dir.empty()) {
      std::string candidate = dir;
      candidate += "/";
      candidate += name;
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    start = end + 1;
  }
  return {};
}

// Owns the QEMU child: killed and reaped on destruction unless it already exited.
class Child {
 public:
  explicit Child(pid_t pid) : pid_(pid) {}
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  bool Running() {
    if (pid_ <= 0) return false;
    int status;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      exit_status_ = status;
      return false;
    }
    return true;
  }
  // Waits up to `timeout` for the child to exit by itself.
  bool WaitExit(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (Running()) {
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
  }
  int exit_status() const { return exit_status_; }

 private:
  pid_t pid_;
  int exit_status_ = -1;
};

// A minimal QMP client: one JSON object per line.
class Qmp {
 public:
  Status Connect(const std::string& path, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (true) {
      auto fd = ConnectUnix(path);
      if (fd.ok()) {
        fd_ = std::move(*fd);
        timeval tv{};
        tv.tv_sec = 30;
        ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        return OkStatus();
      }
      if (Clock::now() >= deadline) return fd.take_error();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  Result<std::string> ReadLine() {
    while (true) {
      size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      char chunk[4096];
      ssize_t n = ::recv(fd_.get(), chunk, sizeof chunk, 0);
      if (n < 0) return ErrnoError("qmp recv");
      if (n == 0) return MakeError(ECONNRESET, "qmp closed");
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }
  // Sends a command and returns the first line that is a reply (skipping async events).
  Result<std::string> Execute(const std::string& command) {
    std::string line = "{\"execute\": \"" + command + "\"}\n";
    VSOCKD_RETURN_IF_ERROR(WriteAll(fd_.get(), line.data(), line.size()));
    while (true) {
      auto reply = ReadLine();
      if (!reply.ok()) return reply;
      if (reply->find("\"return\"") != std::string::npos ||
          reply->find("\"error\"") != std::string::npos) {
        return reply;
      }
    }
  }

 private:
  Fd fd_;
  std::string buf_;
};

TEST(QemuHandshakeTest, QemuRealizesVhostUserVsockAndQuits) {
  // $VSOCKD_QEMU (another QEMU, e.g. 10.0 from scripts/fetch-qemu.sh) or PATH's.
  const char* env_qemu = std::getenv("VSOCKD_QEMU");
  std::string qemu = env_qemu != nullptr && *env_qemu != '\0' ? std::string(env_qemu)
                                                              : FindOnPath("qemu-system-x86_64");
  if (qemu.empty()) {
    const char* require = std::getenv("VSOCKD_REQUIRE_QEMU");
    if (require != nullptr && std::string(require) == "1") {
      FAIL() << "qemu-system-x86_64 not on PATH and VSOCKD_REQUIRE_QEMU=1";
    }
    GTEST_SKIP() << "qemu-system-x86_64 not on PATH";
  }

  std::string tmpl = ::testing::TempDir() + "vsockd_qemu_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  const std::string dir = tmpl;
  const std::string vu_path = dir + "/vu.sock";
  const std::string qmp_path = dir + "/qmp.sock";

  testing::FakeDevice dev(42);
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  auto backend = std::make_unique<Backend>(loop->get(), &dev);
  ASSERT_TRUE(backend->Listen(vu_path).ok());
  std::thread loop_thread([&] { (*loop)->Run(); });
  struct StopLoop {
    EventLoop* loop;
    std::thread* thread;
    ~StopLoop() {
      loop->Stop();
      if (thread->joinable()) thread->join();
    }
  } stop_loop{loop->get(), &loop_thread};

  std::vector<std::string> args = {
      qemu,          "-S",
      "-machine",    "q35,memory-backend=mem",
      "-accel",      "tcg",
      "-object",     "memory-backend-memfd,id=mem,size=64M,share=on",
      "-m",          "64M",
      "-nodefaults", "-no-user-config",
      "-display",    "none",
      "-chardev",    "socket,id=vu0,path=" + vu_path,
      "-device",     "vhost-user-vsock-pci,chardev=vu0",
      "-qmp",        "unix:" + qmp_path + ",server=on,wait=off",
  };
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  Child child(pid);

  // Realize: QEMU reads the CID (offset 0, 8 bytes) through GET_CONFIG.
  ASSERT_TRUE(dev.WaitFor("config 0 8", 1, std::chrono::seconds(60)))
      << "QEMU never sent GET_CONFIG";
  Qmp qmp;
  ASSERT_TRUE(qmp.Connect(qmp_path, std::chrono::seconds(30)).ok());
  auto greeting = qmp.ReadLine();
  ASSERT_TRUE(greeting.ok());
  EXPECT_NE(greeting->find("QMP"), std::string::npos) << *greeting;
  auto caps = qmp.Execute("qmp_capabilities");
  ASSERT_TRUE(caps.ok());
  EXPECT_NE(caps->find("\"return\""), std::string::npos) << *caps;
  auto status = qmp.Execute("query-status");
  ASSERT_TRUE(status.ok());
  EXPECT_NE(status->find("\"return\""), std::string::npos) << *status;
  ASSERT_TRUE(child.Running()) << "QEMU exited after realize";
  EXPECT_EQ(dev.Count("gone"), 0u);

  (void)qmp.Execute("quit");  // QEMU may close the socket before or after replying
  EXPECT_TRUE(child.WaitExit(std::chrono::seconds(30))) << "QEMU did not quit";
  EXPECT_TRUE(dev.WaitFor("gone", 1, std::chrono::seconds(30)))
      << "backend did not notice QEMU leaving";

  ::unlink(vu_path.c_str());
  ::unlink(qmp_path.c_str());
  ::rmdir(dir.c_str());
}

}  // namespace
}  // namespace vsockd::vhost_user
