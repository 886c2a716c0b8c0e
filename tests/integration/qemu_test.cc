// Real QEMU attaches to the real vsockd: `qemu-system-x86_64 -S` realizes
// vhost-user-vsock-pci, which drives the vhost-user handshake through GET_CONFIG (QEMU
// exits at once if any step fails or the reply is malformed). No guest kernel is needed.
// This keeps vsockd and vguest from passing by sharing one misreading of the protocol.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "base/unix_socket.h"
#include "tests/integration/harness.h"

namespace vsockd::testing {
namespace {

bool HaveQemu() { return std::system("command -v qemu-system-x86_64 >/dev/null 2>&1") == 0; }

// Minimal QMP client: sends one command, returns the first line with "return" or "error".
class Qmp {
 public:
  Status Connect(const std::string& path) {
    auto fd = ConnectUnix(path);
    if (!fd.ok()) return fd.take_error();
    fd_ = std::move(*fd);
    auto greeting = ReadLine(fd_.get(), 65536);
    if (!greeting.ok()) return greeting.take_error();
    auto caps = Execute("qmp_capabilities");
    if (!caps.ok()) return caps.take_error();
    return OkStatus();
  }
  Result<std::string> Execute(const std::string& command) {
    std::string msg = "{\"execute\":\"" + command + "\"}\n";
    VSOCKD_RETURN_IF_ERROR(WriteAll(fd_.get(), msg.data(), msg.size()));
    while (true) {
      auto line = ReadLine(fd_.get(), 1 << 20);
      if (!line.ok()) return line.take_error();
      if (line->find("\"return\"") != std::string::npos ||
          line->find("\"error\"") != std::string::npos) {
        return *line;
      }
    }
  }

 private:
  Fd fd_;
};

TEST(QemuTest, QemuCompletesHandshakeThroughGetConfig) {
  if (!HaveQemu()) {
    if (std::getenv("VSOCKD_REQUIRE_QEMU") != nullptr) FAIL() << "qemu-system-x86_64 missing";
    GTEST_SKIP() << "qemu-system-x86_64 not installed (scripts/install-deps.sh --test)";
  }
  TempDir dir;
  Daemon daemon(dir, /*cid=*/42, {"--log-level", "debug"});
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();

  std::string qmp_path = dir.File("qmp.sock");
  Subprocess qemu;
  ASSERT_TRUE(qemu.Start({"/usr/bin/env",
                          "qemu-system-x86_64",
                          "-S",
                          "-machine",
                          "q35,memory-backend=mem",
                          "-accel",
                          "tcg",
                          "-object",
                          "memory-backend-memfd,id=mem,size=64M,share=on",
                          "-m",
                          "64M",
                          "-nodefaults",
                          "-no-user-config",
                          "-display",
                          "none",
                          "-chardev",
                          "socket,id=vu0,path=" + daemon.socket_path(),
                          "-device",
                          "vhost-user-vsock-pci,chardev=vu0,id=vsock0",
                          "-qmp",
                          "unix:" + qmp_path + ",server=on,wait=off"},
                         dir.File("qemu.log"))
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return ::access(qmp_path.c_str(), F_OK) == 0 || !qemu.Running(); },
                      std::chrono::seconds(30)))
      << qemu.Log();
  ASSERT_TRUE(qemu.Running()) << "QEMU exited during device realize:\n"
                              << qemu.Log() << "\nvsockd:\n"
                              << daemon.Log();

  Qmp qmp;
  ASSERT_TRUE(WaitFor([&] { return qmp.Connect(qmp_path).ok(); }, std::chrono::seconds(30)));
  // The device was realized, so GET_CONFIG succeeded; QEMU shows it on the PCI bus with
  // the virtio-vsock device id (1af4:1053).
  auto pci = qmp.Execute("query-pci");
  ASSERT_TRUE(pci.ok()) << pci.error().ToString();
  EXPECT_NE(pci->find("\"device\": 4179"), std::string::npos) << *pci;  // 0x1053
  auto status = qmp.Execute("query-status");
  ASSERT_TRUE(status.ok());
  EXPECT_NE(status->find("prelaunch"), std::string::npos) << *status;
  std::string log = daemon.Log();
  EXPECT_NE(log.find("GET_CONFIG"), std::string::npos) << log;

  (void)qmp.Execute("quit");
  EXPECT_TRUE(WaitFor([&] { return !qemu.Running(); }, std::chrono::seconds(20)));
  // vsockd survives the frontend leaving and waits for the next one.
  EXPECT_TRUE(WaitFor([&] { return daemon.Log().find("disconnected") != std::string::npos; }))
      << daemon.Log();
  EXPECT_TRUE(daemon.Running());
  int status_code = daemon.Stop();
  EXPECT_TRUE(WIFEXITED(status_code) && WEXITSTATUS(status_code) == 0) << daemon.Log();
}

}  // namespace
}  // namespace vsockd::testing
