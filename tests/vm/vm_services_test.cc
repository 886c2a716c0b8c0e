// Real guest services through vsockd (issue 15): Debian's unmodified qemu-guest-agent and
// OpenSSH server in the test guest, reached from the host the way users reach them.
//
// - qemu-ga listens on a guest vsock port (`qemu-ga -m vsock-listen`); the test speaks its
//   JSON protocol over a hybrid CONNECT (guest-sync-delimited, guest-ping, guest-info,
//   guest-exec + guest-exec-status, guest-file-open/write/read/close).
// - sshd runs per connection behind `socat VSOCK-LISTEN:22,fork EXEC:'sshd -i'`; the host's
//   stock ssh/scp reach it with `ProxyCommand=vsockcat hvsock://<uds-path>:22` (vsockd's
//   hybrid Unix socket: nothing on the host touches AF_VSOCK, and ssh, its proxy and scp all
//   run under no_vsock_guard). Keys are made for the test and installed at run time.
//
// Everything is checked by content (base64 output, SHA-256 of the files on both sides);
// timeouts are generous because the guest runs under TCG.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "base/fd.h"
#include "tests/integration/harness.h"
#include "tests/vm/vm.h"
#include "tests/vm/vm_fixture.h"

namespace vsockd::vmtest {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using vsockd::testing::BuiltBinary;
using vsockd::testing::Guarded;
using vsockd::testing::ReadFile;
using vsockd::testing::RunCommand;
using vsockd::testing::SetSocketTimeouts;
using vsockd::testing::ShellLine;
using vsockd::testing::Subprocess;
using json = nlohmann::json;

constexpr auto kCmd = std::chrono::seconds(120);
constexpr uint32_t kQgaPort = 5700;
constexpr uint32_t kSshPort = 22;
// A host-side ssh/scp run: the key exchange and 16 MiB of ciphertext under TCG.
constexpr auto kSshTimeout = std::chrono::seconds(600);

std::string Base64Encode(const std::string& in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// Strict decoding (padding required); nullopt on anything else.
std::optional<std::string> Base64Decode(const std::string& in) {
  if (in.size() % 4 != 0) return std::nullopt;
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  for (size_t i = 0; i < in.size(); i += 4) {
    int pad = (in[i + 3] == '=') + (in[i + 2] == '=');
    if (pad > 0 && i + 4 != in.size()) return std::nullopt;
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      int d = (k >= 4 - pad) ? 0 : value(in[i + k]);
      if (d < 0) return std::nullopt;
      v = (v << 6) | uint32_t(d);
    }
    out += char((v >> 16) & 0xff);
    if (pad < 2) out += char((v >> 8) & 0xff);
    if (pad < 1) out += char(v & 0xff);
  }
  return out;
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    for (size_t k = 0; k < 8 && i + k < n; ++k) s[i + k] = char((v >> (8 * k)) & 0xff);
  }
  return s;
}

bool WriteHostFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data.data(), std::streamsize(data.size()));
  return f.good();
}

// The SHA-256 (hex) of a host file by sha256sum (coreutils), "" on failure.
std::string HostSha256(const std::string& path) {
  auto r = RunCommand("sha256sum " + ShellLine({path}));
  if (r.exit_code != 0 || r.output.size() < 64) return "";
  return r.output.substr(0, 64);
}

// A qemu-ga client on one hybrid connection: one JSON command a line, one JSON reply a line.
class QgaClient {
 public:
  explicit QgaClient(Fd conn) : conn_(std::move(conn)) {
    SetSocketTimeouts(conn_.get(), std::chrono::seconds(120));
  }

  // guest-sync-delimited: a 0xFF first resets qemu-ga's parser; its reply starts with a 0xFF
  // sentinel, and everything before that (a stale reply) is dropped.
  ::testing::AssertionResult Sync(int64_t id) {
    std::string cmd =
        "\xff" + json{{"execute", "guest-sync-delimited"}, {"arguments", {{"id", id}}}}.dump() +
        "\n";
    Status w = WriteAll(conn_.get(), cmd.data(), cmd.size());
    if (!w.ok()) return ::testing::AssertionFailure() << w.error().ToString();
    for (;;) {
      size_t ff = buffer_.find('\xff');
      if (ff != std::string::npos) {
        buffer_.erase(0, ff + 1);
        break;
      }
      buffer_.clear();
      if (!Fill()) return ::testing::AssertionFailure() << "no 0xFF sentinel before EOF";
    }
    // The sentinel is followed by the reply to this sync; older replies came before it.
    auto reply = ReadReply();
    if (!reply) return ::testing::AssertionFailure() << "no reply to guest-sync-delimited";
    if (!reply->contains("return") || (*reply)["return"] != id) {
      return ::testing::AssertionFailure() << "sync reply " << reply->dump();
    }
    return ::testing::AssertionSuccess();
  }

  // Sends a command and returns its reply (nullopt on I/O or JSON errors).
  std::optional<json> Execute(const std::string& name, const json& args = nullptr) {
    json cmd = {{"execute", name}};
    if (!args.is_null()) cmd["arguments"] = args;
    std::string line = cmd.dump() + "\n";
    if (!WriteAll(conn_.get(), line.data(), line.size()).ok()) return std::nullopt;
    return ReadReply();
  }

 private:
  bool Fill() {
    char buf[65536];
    ssize_t n = ::recv(conn_.get(), buf, sizeof(buf), 0);
    if (n <= 0) return false;
    buffer_.append(buf, size_t(n));
    return true;
  }

  std::optional<json> ReadReply() {
    for (;;) {
      size_t nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
        json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded()) return std::nullopt;
        return j;
      }
      if (buffer_.size() > (64u << 20) || !Fill()) return std::nullopt;
    }
  }

  Fd conn_;
  std::string buffer_;
};

class VmServicesTest : public VmFixture<VmServicesTest> {
 protected:
  // An image built before the services were added lacks them: say so instead of timing out.
  bool ImageHas(const std::string& path) {
    auto r = vm().Run("test -x " + path, kCmd);
    EXPECT_TRUE(r.ok() && r->exit_status == 0)
        << path << " is not in the guest image: rebuild it (scripts/build-guest.sh)";
    return r.ok() && r->exit_status == 0;
  }

  // Starts qemu-ga on kQgaPort (once per VM) and connects to it through vsockd.
  std::optional<QgaClient> ConnectQga() {
    if (vm().pid() != qga_vm_) {
      if (!ImageHas("/usr/sbin/qemu-ga")) return std::nullopt;
      auto spawned =
          vm().Spawn("/usr/sbin/qemu-ga -m vsock-listen -p 4294967295:" + std::to_string(kQgaPort) +
                         " -t /run -f /run/qemu-ga.pid",
                     "/tmp/qemu-ga.log");
      EXPECT_TRUE(spawned.ok()) << spawned.error().ToString();
      if (!spawned.ok()) return std::nullopt;
      qga_vm_ = vm().pid();
    }
    auto conn = ConnectToGuest(kQgaPort);
    EXPECT_TRUE(conn.ok()) << conn.error().ToString() << "\n"
                           << Diag("cat /tmp/qemu-ga.log") << "\n"
                           << DaemonLog();
    if (!conn.ok()) return std::nullopt;
    return QgaClient(std::move(*conn));
  }

  // Keys for this test (host side) and sshd behind socat on guest port 22, once per VM.
  void StartSsh() {
    if (vm().pid() == ssh_vm_) return;
    ASSERT_TRUE(ImageHas("/usr/sbin/sshd"));
    key_ = dir().File("id_ed25519");
    if (!vsockd::testing::PathExists(key_)) {
      auto gen =
          RunCommand("ssh-keygen -q -t ed25519 -N '' -C vsockd-vm-test -f " + ShellLine({key_}));
      ASSERT_EQ(gen.exit_code, 0) << gen.output;
    }
    std::string pub = ReadFile(key_ + ".pub");
    while (!pub.empty() && pub.back() == '\n') pub.pop_back();
    ASSERT_THAT(pub, ::testing::StartsWith("ssh-ed25519 "));
    ASSERT_TRUE(vm().RunOk("mkdir -p /root/.ssh && chmod 700 /root/.ssh && printf '%s\\n' '" + pub +
                               "' > /root/.ssh/authorized_keys && chmod 600 "
                               "/root/.ssh/authorized_keys",
                           kCmd)
                    .ok());
    ASSERT_TRUE(vm().Spawn("socat VSOCK-LISTEN:" + std::to_string(kSshPort) +
                               ",reuseaddr,fork 'EXEC:/usr/sbin/sshd -i -e'",
                           "/tmp/sshd.log")
                    .ok());
    // sshd speaks first: its banner proves the listener, socat and sshd -i are up.
    auto conn = ConnectToGuest(kSshPort);
    ASSERT_TRUE(conn.ok()) << conn.error().ToString() << "\n" << Diag("cat /tmp/sshd.log");
    SetSocketTimeouts(conn->get(), std::chrono::seconds(120));
    auto banner = vsockd::testing::ReadLine(conn->get());
    ASSERT_TRUE(banner.ok()) << banner.error().ToString() << "\n" << Diag("cat /tmp/sshd.log");
    EXPECT_THAT(*banner, ::testing::StartsWith("SSH-2.0-OpenSSH_")) << Diag("cat /tmp/sshd.log");
    ssh_vm_ = vm().pid();
  }

  // The options every ssh/scp run shares: the test's key only, no host key checks (the
  // guest's key is the image's), no prompts, and vsockcat through vsockd's hybrid socket.
  std::vector<std::string> SshOptions() {
    std::string proxy =
        ShellLine(Guarded({BuiltBinary("src/tools/vsockcat/vsockcat"),
                           "hvsock://" + daemon().uds_path() + ":" + std::to_string(kSshPort)}));
    return {"-F", "/dev/null",
            "-i", key_,
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "-o", "ProxyCommand=" + proxy};
  }

  // Runs ssh or scp (under no_vsock_guard) to completion; returns the output, with the exit
  // status checked.
  ::testing::AssertionResult RunSsh(const std::string& program,
                                    const std::vector<std::string>& args, std::string* output) {
    std::vector<std::string> argv = {program};
    for (auto& o : SshOptions()) argv.push_back(o);
    for (const auto& a : args) argv.push_back(a);
    // Subprocess appends to its log: one file per run.
    std::string log = dir().File(program + "-" + std::to_string(++runs_) + ".log");
    Subprocess proc;
    Status started = proc.Start(Guarded(argv), log);
    if (!started.ok()) return ::testing::AssertionFailure() << started.error().ToString();
    auto start = std::chrono::steady_clock::now();
    int status = proc.Wait(kSshTimeout);
    *output = proc.Log();
    std::cout << "[ vm ] " << program << " took " << MsSince(start) << " ms\n";
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return ::testing::AssertionFailure()
             << ShellLine(argv) << "\nwait status " << status << "; output:\n"
             << *output << "\nguest sshd log:\n"
             << Diag("cat /tmp/sshd.log") << "\nvsockd log:\n"
             << DaemonLog();
    }
    return ::testing::AssertionSuccess();
  }

  // Neither service made vsockd warn (a guest packet it rejected, a reset it did not expect):
  // both are ordinary clients of the device.
  void ExpectNoDaemonWarnings() {
    std::istringstream log(DaemonLog());
    std::string line;
    while (std::getline(log, line)) {
      EXPECT_EQ(line.find(" W [vsockd]"), std::string::npos) << line;
      EXPECT_EQ(line.find(" E [vsockd]"), std::string::npos) << line;
    }
  }

  std::string GuestSha256(const std::string& path) {
    std::string out = GuestOk("sha256sum " + path);
    return out.size() >= 64 ? out.substr(0, 64) : out;
  }

  static inline pid_t qga_vm_ = -1;
  static inline pid_t ssh_vm_ = -1;
  static inline std::string key_;
  static inline int runs_ = 0;
};

TEST_F(VmServicesTest, QemuGuestAgentPingInfoAndExec) {
  auto qga = ConnectQga();
  ASSERT_TRUE(qga.has_value());
  ASSERT_TRUE(qga->Sync(1234567));

  auto ping = qga->Execute("guest-ping");
  ASSERT_TRUE(ping.has_value());
  EXPECT_EQ(*ping, (json{{"return", json::object()}})) << ping->dump();

  auto info = qga->Execute("guest-info");
  ASSERT_TRUE(info.has_value());
  ASSERT_TRUE(info->contains("return")) << info->dump();
  const json& ret = (*info)["return"];
  EXPECT_THAT(ret.value("version", std::string()), ::testing::StartsWith("7."));
  bool exec_enabled = false;
  for (const auto& c : ret.value("supported_commands", json::array())) {
    if (c.value("name", "") == "guest-exec") exec_enabled = c.value("enabled", false);
  }
  EXPECT_TRUE(exec_enabled) << ret.dump();

  // guest-exec with captured output, then guest-exec-status until it exited.
  auto exec = qga->Execute(
      "guest-exec", {{"path", "/bin/sh"},
                     {"arg", {"-c", "echo out-from-qga; uname -s; echo err-from-qga >&2; exit 7"}},
                     {"capture-output", true}});
  ASSERT_TRUE(exec.has_value());
  ASSERT_TRUE(exec->contains("return")) << exec->dump();
  int64_t pid = (*exec)["return"].value("pid", int64_t{-1});
  ASSERT_GT(pid, 0) << exec->dump();
  json status;
  bool exited = vsockd::testing::WaitFor(
      [&] {
        auto s = qga->Execute("guest-exec-status", {{"pid", pid}});
        if (!s.has_value() || !s->contains("return")) return false;
        status = (*s)["return"];
        if (status.value("exited", false)) return true;
        std::this_thread::sleep_for(100ms);
        return false;
      },
      kCmd);
  ASSERT_TRUE(exited) << status.dump();
  EXPECT_EQ(status.value("exitcode", -1), 7) << status.dump();
  auto out = Base64Decode(status.value("out-data", std::string()));
  auto err = Base64Decode(status.value("err-data", std::string()));
  ASSERT_TRUE(out.has_value()) << status.dump();
  ASSERT_TRUE(err.has_value()) << status.dump();
  EXPECT_EQ(*out, "out-from-qga\nLinux\n");
  EXPECT_EQ(*err, "err-from-qga\n");
  ExpectNoDaemonWarnings();
}

TEST_F(VmServicesTest, QemuGuestAgentFileRoundTrip) {
  auto qga = ConnectQga();
  ASSERT_TRUE(qga.has_value());
  ASSERT_TRUE(qga->Sync(42));
  const std::string path = "/tmp/qga-file.bin";
  // 1 MiB in 64 KiB writes (each one base64 JSON line of ~87 KB).
  const std::string data = RandomBytes(1 << 20, 15);
  const std::string host_copy = dir().File("qga-file.bin");
  ASSERT_TRUE(WriteHostFile(host_copy, data));

  auto open = qga->Execute("guest-file-open", {{"path", path}, {"mode", "w"}});
  ASSERT_TRUE(open.has_value());
  ASSERT_TRUE(open->contains("return")) << open->dump();
  int64_t handle = (*open)["return"].get<int64_t>();
  for (size_t off = 0; off < data.size(); off += 65536) {
    auto w = qga->Execute("guest-file-write",
                          {{"handle", handle}, {"buf-b64", Base64Encode(data.substr(off, 65536))}});
    ASSERT_TRUE(w.has_value());
    ASSERT_TRUE(w->contains("return")) << w->dump();
    ASSERT_EQ((*w)["return"].value("count", -1), 65536) << w->dump();
  }
  auto closed = qga->Execute("guest-file-close", {{"handle", handle}});
  ASSERT_TRUE(closed.has_value());
  EXPECT_TRUE(closed->contains("return")) << closed->dump();

  // The guest's own checksum of what qemu-ga wrote.
  EXPECT_EQ(GuestSha256(path), HostSha256(host_copy));

  // And back through guest-file-read.
  open = qga->Execute("guest-file-open", {{"path", path}, {"mode", "r"}});
  ASSERT_TRUE(open.has_value());
  ASSERT_TRUE(open->contains("return")) << open->dump();
  handle = (*open)["return"].get<int64_t>();
  std::string back;
  for (;;) {
    auto r = qga->Execute("guest-file-read", {{"handle", handle}, {"count", 200000}});
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(r->contains("return")) << r->dump();
    auto chunk = Base64Decode((*r)["return"].value("buf-b64", std::string()));
    ASSERT_TRUE(chunk.has_value());
    ASSERT_EQ(int64_t(chunk->size()), (*r)["return"].value("count", int64_t{-1}));
    back += *chunk;
    if ((*r)["return"].value("eof", false) || chunk->empty()) break;
    ASSERT_LE(back.size(), data.size());
  }
  closed = qga->Execute("guest-file-close", {{"handle", handle}});
  ASSERT_TRUE(closed.has_value());
  ASSERT_EQ(back.size(), data.size());
  EXPECT_TRUE(back == data) << "guest-file-read returned other bytes";
  ExpectNoDaemonWarnings();
}

TEST_F(VmServicesTest, SshRunsACommand) {
  ASSERT_NO_FATAL_FAILURE(StartSsh());
  std::string out;
  ASSERT_TRUE(RunSsh("ssh", {"root@vsockd-guest", "echo ssh-ok; id -u; uname -s"}, &out));
  EXPECT_THAT(out, HasSubstr("ssh-ok\n0\nLinux\n"));
  // The exit status of the remote command comes back too.
  std::vector<std::string> argv = {"ssh"};
  for (auto& o : SshOptions()) argv.push_back(o);
  argv.push_back("root@vsockd-guest");
  argv.push_back("exit 3");
  Subprocess proc;
  ASSERT_TRUE(proc.Start(Guarded(argv), dir().File("ssh-exit.log")).ok());
  int status = proc.Wait(kSshTimeout);
  ASSERT_TRUE(WIFEXITED(status)) << status << "\n" << proc.Log();
  EXPECT_EQ(WEXITSTATUS(status), 3) << proc.Log();
  ExpectNoDaemonWarnings();
}

TEST_F(VmServicesTest, ScpCopies16MiBEachWay) {
  ASSERT_NO_FATAL_FAILURE(StartSsh());
  constexpr size_t kBytes = 16u << 20;
  const std::string up = dir().File("up.bin");
  ASSERT_TRUE(WriteHostFile(up, RandomBytes(kBytes, 1515)));
  std::string up_sum = HostSha256(up);
  ASSERT_EQ(up_sum.size(), 64u);
  std::string out;
  // Debian 12's scp speaks sftp (the guest's sftp-server).
  ASSERT_TRUE(RunSsh("scp", {up, "root@vsockd-guest:/tmp/up.bin"}, &out));
  EXPECT_EQ(GuestSha256("/tmp/up.bin"), up_sum);
  GuestOk("rm -f /tmp/up.bin");

  GuestOk("head -c " + std::to_string(kBytes) + " /dev/urandom > /tmp/down.bin");
  std::string down_sum = GuestSha256("/tmp/down.bin");
  ASSERT_EQ(down_sum.size(), 64u);
  const std::string down = dir().File("down.bin");
  ASSERT_TRUE(RunSsh("scp", {"root@vsockd-guest:/tmp/down.bin", down}, &out));
  EXPECT_EQ(HostSha256(down), down_sum);
  GuestOk("rm -f /tmp/down.bin");
  ExpectNoDaemonWarnings();
}

}  // namespace
}  // namespace vsockd::vmtest
