// vsockd_demo: the README's main job. Starts vsockd and a real Linux guest (QEMU, TCG) attached
// to it, then shows traffic both ways with the seed's own programs and a vsockperf figure:
//
//   1. guest -> host: /seed/vsock_client.py in the guest (AF_VSOCK, the real kernel driver)
//      reaches /seed/vsock_server.py on the host, an unmodified AF_VSOCK program run under
//      the LD_PRELOAD shim (and the guard that makes a real AF_VSOCK socket fail here);
//   2. host -> guest: the same programs with their addresses swapped (the server in the guest
//      bound to VMADDR_CID_ANY, the client on the host connecting to the guest's CID);
//   3. vsockperf in the guest against a vsockperf server on the host's hybrid socket, both
//      directions.
//   4. ssh into the guest: Debian's sshd, per connection behind a vsock listener in the guest,
//      reached by the host's stock ssh client with vsockcat as ProxyCommand (key made here).
//
// Run by scripts/demo.sh after it built everything (vsockd in build/, the guest image in
// build-guest/image). Exit status 0 when every step worked. Nothing is left running: the
// guest is powered off (or killed), vsockd and host programs are stopped.
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "base/run_main.h"
#include "tests/integration/harness.h"
#include "tests/vm/vm.h"

namespace vsockd::demo {
namespace {

using namespace std::chrono_literals;
using testing::Daemon;
using testing::PathExists;
using testing::ReadFile;
using testing::Subprocess;
using testing::TempDir;
using vmtest::Vm;

void Step(const std::string& what) { std::printf("\n==> %s\n", what.c_str()); }

// Prints every line of `text` with a prefix saying where it came from.
void Show(const std::string& who, const std::string& text) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) std::printf("    %s| %s\n", who.c_str(), line.c_str());
  std::fflush(stdout);
}

int Fail(const std::string& why) {
  std::fprintf(stderr, "\nvsockd_demo: FAILED: %s\n", why.c_str());
  return 1;
}

struct Args {
  std::string image;
  double perf_seconds = 3;
  bool keep_console = false;
};

int Demo(const Args& args) {
  if (auto st = vmtest::CheckImage(args.image); !st.ok()) return Fail(st.error().ToString());
  if (auto st = vmtest::CheckQemu(); !st.ok()) return Fail(st.error().ToString());

  TempDir dir;
  const std::string run_dir = dir.File("run");
  Step("starting vsockd (guest CID 3)");
  Daemon daemon(dir, 3, {"--run-dir", run_dir});
  if (auto st = daemon.Start(); !st.ok()) return Fail(st.error().ToString());
  std::printf("    vsockd --socket %s --guest-cid 3 --uds-path %s --run-dir %s\n",
              daemon.socket_path().c_str(), daemon.uds_path().c_str(), run_dir.c_str());

  Step("booting the guest: Debian's kernel under QEMU (TCG), -device vhost-user-vsock-pci");
  vmtest::VmOptions vo;
  vo.image_dir = args.image;
  vo.vhost_socket = daemon.socket_path();
  vo.name = "demo";
  vo.console_log_path = dir.File("console.log");
  auto vm_or = Vm::Boot(vo);
  if (!vm_or.ok()) return Fail(vm_or.error().ToString() + "\nvsockd log:\n" + daemon.Log());
  std::unique_ptr<Vm> vm = std::move(*vm_or);
  if (auto st = vm->WaitForVsockDevice(); !st.ok()) return Fail(st.error().ToString());
  auto kernel = vm->RunOk("uname -r", 30s);
  std::printf("    guest up in %.1f s; its kernel: %s\n", vm->boot_time().count() / 1000.0,
              kernel.ok() ? kernel->c_str() : "?");

  // 1. guest -> host with the seed's programs, unmodified.
  Step("guest -> host: vsock_client.py in the guest, vsock_server.py on the host (shim)");
  {
    Subprocess server;
    std::vector<std::string> argv = testing::Shimmed(run_dir);
    argv.push_back("python3");
    argv.push_back(testing::SeedProgram("vsock_server.py"));
    if (auto st = server.Start(argv, dir.File("server.log")); !st.ok()) {
      return Fail(st.error().ToString());
    }
    if (!testing::WaitFor([&] { return PathExists(run_dir + "/host_9999"); }, 30s)) {
      return Fail("the host server did not listen:\n" + server.Log());
    }
    auto r = vm->Run("python3 /seed/vsock_client.py", 120s);
    if (!r.ok()) return Fail(r.error().ToString());
    if (r->exit_status != 0) return Fail("vsock_client.py in the guest failed:\n" + r->output);
    if (!testing::WaitFor([&] { return !server.Running(); }, 30s)) {
      return Fail("the host server did not finish:\n" + server.Log());
    }
    Show("host vsock_server.py", server.Log());
    if (server.Log().find("Received bytes: b'Hello, world!'") == std::string::npos) {
      return Fail("the host server did not receive the guest's message");
    }
  }

  // 2. host -> guest: the same programs, addresses swapped.
  Step(
      "host -> guest: vsock_server.py in the guest (VMADDR_CID_ANY), vsock_client.py on the "
      "host (CID 3, shim)");
  {
    if (auto st = vm->RunOk("sed 's/^CID = socket.VMADDR_CID_HOST/CID = socket.VMADDR_CID_ANY/' "
                            "/seed/vsock_server.py > /tmp/vsock_server.py",
                            30s);
        !st.ok()) {
      return Fail(st.error().ToString());
    }
    if (auto st = vm->Spawn("python3 -u /tmp/vsock_server.py", "/tmp/server.log"); !st.ok()) {
      return Fail(st.error().ToString());
    }
    std::string client = ReadFile(testing::SeedProgram("vsock_client.py"));
    const std::string from = "CID = socket.VMADDR_CID_HOST";
    size_t at = client.find(from);
    if (at == std::string::npos) return Fail("unexpected vsock_client.py");
    client.replace(at, from.size(), "CID = 3");
    const std::string client_path = dir.File("vsock_client.py");
    std::ofstream(client_path) << client;
    std::vector<std::string> argv = testing::Shimmed(run_dir);
    argv.push_back("python3");
    argv.push_back(client_path);
    // The guest's python needs a moment (TCG) before it listens: retry a refused connect.
    testing::RunResult r;
    bool sent = testing::WaitFor(
        [&] {
          r = testing::RunCommand(testing::ShellLine(argv));
          return r.exit_code == 0;
        },
        60s);
    if (!sent) return Fail("the host client could not reach the guest:\n" + r.output);
    std::string log;
    testing::WaitFor(
        [&] {
          auto out = vm->RunOk("cat /tmp/server.log", 30s);
          log = out.ok() ? *out : "";
          return log.find("Received bytes") != std::string::npos;
        },
        30s);
    Show("guest vsock_server.py", log);
    if (log.find("Connection opened by cid=2 port=") == std::string::npos ||
        log.find("Received bytes: b'Hello, world!'") == std::string::npos) {
      return Fail("the guest server did not receive the host's message");
    }
  }

  // 3. vsockperf: the guest's kernel driver <-> vsockd <-> a host Unix socket.
  Step("vsockperf: guest (AF_VSOCK) <-> host (hybrid Unix socket), 64 KiB writes");
  {
    Subprocess server;
    const std::string addr = "hvsock://" + daemon.uds_path() + ":5201";
    if (auto st = server.Start(
            testing::Guarded({testing::BuiltBinary("src/tools/vsockperf/vsockperf"), "-s", addr}),
            dir.File("vsockperf.log"));
        !st.ok()) {
      return Fail(st.error().ToString());
    }
    if (!testing::WaitFor([&] { return PathExists(daemon.uds_path() + "_5201"); }, 30s)) {
      return Fail("vsockperf server did not listen:\n" + server.Log());
    }
    const std::string secs = std::to_string(args.perf_seconds);
    for (const char* dir_flag : {"", " -R"}) {
      auto r = vm->Run("vsockperf -c vsock://2:5201 -l 64K -i 0 -t " + secs + dir_flag, 120s);
      if (!r.ok()) return Fail(r.error().ToString());
      if (r->exit_status != 0) return Fail("vsockperf in the guest failed:\n" + r->output);
      Show(*dir_flag == '\0' ? "guest -> host" : "host -> guest", r->output);
    }
    std::printf(
        "    (the guest CPU is emulated by QEMU's TCG here, so this measures the emulator more\n"
        "     than vsockd; scripts/bench.sh measures vsockd itself against raw AF_UNIX)\n");
    server.Stop();
  }

  // 4. A command over ssh: sshd -i per connection on guest port 22, the host's ssh through
  // vsockd's hybrid socket (CONNECT 22).
  Step("ssh through vsockd: sshd in the guest (vsock port 22), ssh on the host (ProxyCommand)");
  {
    const std::string key = dir.File("id_ed25519");
    auto gen =
        testing::RunCommand("ssh-keygen -q -t ed25519 -N '' -f " + testing::ShellLine({key}));
    if (gen.exit_code != 0) return Fail("ssh-keygen failed (openssh-client):\n" + gen.output);
    std::string pub = ReadFile(key + ".pub");
    while (!pub.empty() && pub.back() == '\n') pub.pop_back();
    if (auto st = vm->RunOk(
            "mkdir -p -m 700 /root/.ssh && echo '" + pub + "' > /root/.ssh/authorized_keys", 30s);
        !st.ok()) {
      return Fail(st.error().ToString());
    }
    if (auto st = vm->Spawn("socat VSOCK-LISTEN:22,reuseaddr,fork 'EXEC:/usr/sbin/sshd -i -e'",
                            "/tmp/sshd.log");
        !st.ok()) {
      return Fail(st.error().ToString());
    }
    const std::string proxy = "vsockcat hvsock://" + daemon.uds_path() + ":22";
    std::printf("    guest: socat VSOCK-LISTEN:22,fork EXEC:'/usr/sbin/sshd -i'\n");
    std::printf("    host:  ssh -o ProxyCommand='%s' root@guest uname -a\n", proxy.c_str());
    std::vector<std::string> argv = {
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        key,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ProxyCommand=" + testing::ShellLine(
                              testing::Guarded({testing::BuiltBinary("src/tools/vsockcat/vsockcat"),
                                                "hvsock://" + daemon.uds_path() + ":22"})),
        "root@guest",
        "uname -a"};
    // The guest's listener needs a moment (TCG): retry until ssh gets through.
    testing::RunResult r;
    bool ran = testing::WaitFor(
        [&] {
          r = testing::RunCommand(testing::ShellLine(testing::Guarded(argv)));
          return r.exit_code == 0;
        },
        60s);
    if (!ran) return Fail("ssh into the guest failed:\n" + r.output);
    Show("ssh root@guest", r.output);
    if (r.output.find("Linux") == std::string::npos) return Fail("unexpected ssh output");
  }

  Step("powering the guest off, stopping vsockd");
  if (auto st = vm->Poweroff(); !st.ok()) return Fail(st.error().ToString());
  vm.reset();
  int status = daemon.Stop();
  if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
    return Fail("vsockd did not exit cleanly:\n" + daemon.Log());
  }
  if (args.keep_console) Show("console", ReadFile(dir.File("console.log")));
  std::printf("\nvsockd demo: OK (traffic both ways through a real guest kernel)\n");
  return 0;
}

}  // namespace
}  // namespace vsockd::demo

namespace {

int DemoMain(int argc, char** argv) {
  vsockd::demo::Args args;
  args.image = vsockd::vmtest::DefaultImageDir();
  CLI::App app{"vsockd demo: vsockd + a real Linux guest under QEMU, traffic both ways"};
  app.add_option("--image", args.image, "guest image directory (scripts/build-guest.sh)");
  app.add_option("--perf-seconds", args.perf_seconds, "seconds per vsockperf run")
      ->check(CLI::Range(0.5, 60.0));
  app.add_flag("--show-console", args.keep_console, "print the guest console at the end");
  CLI11_PARSE(app, argc, argv);
  return vsockd::demo::Demo(args);
}

}  // namespace

int main(int argc, char** argv) { return vsockd::RunMain("vsockd_demo", DemoMain, argc, argv); }
