// Unit tests of the VM runner without QEMU: a fake "qemu-system-x86_64" (a shell script the
// test writes) ignores its arguments, prints some console noise and the ready marker, then
// runs the real guest agent (guest/rootfs/agent) on the host's /bin/sh. So the runner's
// protocol handling and the agent itself are checked on every build, with no guest image.
//
// Safety: the host's /bin/sh must never run `reboot -f` (the tests may run as root). The
// tests power off with a harmless command (VmOptions::poweroff_command), and the fake puts a
// refusing `reboot` first in PATH as a second guard.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "tests/integration/harness.h"
#include "tests/vm/vm.h"

namespace vsockd::vmtest {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using vsockd::testing::ReadFile;
using vsockd::testing::TempDir;
using vsockd::testing::WaitFor;

const std::string kAgent = std::string(VSOCKD_SOURCE_DIR) + "/guest/rootfs/agent";

void WriteExecutable(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  ::chmod(path.c_str(), 0755);
}

// True once `pid` no longer runs: gone, or a zombie waiting for someone else to reap it.
bool Gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  size_t paren = stat.rfind(')');
  return paren == std::string::npos || (paren + 2 < stat.size() && stat[paren + 2] == 'Z');
}

// The common start of every fake: guard PATH, record its pid.
std::string FakeHeader(const TempDir& dir) {
  ::mkdir(dir.File("bin").c_str(), 0755);
  WriteExecutable(dir.File("bin/reboot"),
                  "#!/bin/sh\necho 'fake guest: refusing to reboot the host' >&2\nexit 1\n");
  return "#!/bin/sh\n# fake qemu-system-x86_64: ignores its arguments\nPATH='" + dir.File("bin") +
         "':$PATH\nexport PATH\necho $$ > '" + dir.File("fake.pid") + "'\n";
}

// A well-behaved fake: noise (stdout and stderr, a CRLF line), ready, the agent; when the
// agent ends, exit 0 like QEMU after the guest's `reboot -f`.
std::string StandardBody() {
  return "echo 'SeaBIOS (version fake)'\n"
         "echo 'qemu-system-x86_64: warning: fake noise on stderr' >&2\n"
         "printf '[    0.123456] kernel: a message\\r\\n'\n"
         "echo @@VSOCKD-GUEST-READY\n"
         "/bin/sh '" +
         kAgent + "'\nexit 0\n";
}

class VmRunnerTest : public ::testing::Test {
 protected:
  VmOptions Options(const std::string& body) {
    std::string fake = dir_.File("fake-qemu");
    WriteExecutable(fake, FakeHeader(dir_) + body);
    VmOptions o;
    o.image_dir = dir_.path();
    o.vhost_socket = dir_.File("vhost.sock");
    o.name = "fake";
    o.qemu = fake;
    o.console_log_path = dir_.File("console.log");
    o.boot_timeout = std::chrono::seconds(30);
    o.poweroff_command = "kill -KILL $PPID";  // ends the agent; the fake then exits 0
    return o;
  }
  std::unique_ptr<Vm> BootOrDie(const VmOptions& o) {
    auto vm = Vm::Boot(o);
    EXPECT_TRUE(vm.ok()) << vm.error().ToString();
    return vm.ok() ? std::move(*vm) : nullptr;
  }
  pid_t FakePid() { return static_cast<pid_t>(std::atoi(ReadFile(dir_.File("fake.pid")).c_str())); }

  TempDir dir_;
  static constexpr auto kT = std::chrono::seconds(20);
};

TEST_F(VmRunnerTest, RunsCommandsAndReportsOutputAndStatus) {
  auto vm = BootOrDie(Options(StandardBody()));
  ASSERT_NE(vm, nullptr);
  EXPECT_TRUE(vm->Running());
  EXPECT_GT(vm->pid(), 0);

  auto hi = vm->Run("echo hi", kT);
  ASSERT_TRUE(hi.ok()) << hi.error().ToString();
  EXPECT_EQ(hi->exit_status, 0);
  EXPECT_EQ(hi->output, "hi");

  auto f = vm->Run("false", kT);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->exit_status, 1);
  EXPECT_EQ(f->output, "");

  auto seven = vm->Run("echo out; echo err >&2; exit 7", kT);
  ASSERT_TRUE(seven.ok());
  EXPECT_EQ(seven->exit_status, 7);
  EXPECT_EQ(seven->output, "out\nerr");

  // The last line without a newline: @@END follows on the same line and is split off.
  auto partial = vm->Run("echo a; printf b", kT);
  ASSERT_TRUE(partial.ok());
  EXPECT_EQ(partial->exit_status, 0);
  EXPECT_EQ(partial->output, "a\nb");

  // An empty command is a no-op with status 0.
  auto empty = vm->Run("", kT);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->exit_status, 0);
  EXPECT_EQ(empty->output, "");

  auto ok = vm->RunOk("echo fine", kT);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, "fine");
  auto bad = vm->RunOk("echo why; exit 3", kT);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.error().ToString(), HasSubstr("status 3"));
  EXPECT_THAT(bad.error().ToString(), HasSubstr("why"));
}

TEST_F(VmRunnerTest, CommandsKeepTheirQuotingPipesAndRedirections) {
  auto vm = BootOrDie(Options(StandardBody()));
  ASSERT_NE(vm, nullptr);
  auto q = vm->Run(R"(printf '%s\n' "a  b" 'c"d' "it's" '$HOME' "x\\y")", kT);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->output, "a  b\nc\"d\nit's\n$HOME\nx\\y");
  auto pipe = vm->Run("echo abc | tr a-c x-z | cat", kT);
  ASSERT_TRUE(pipe.ok());
  EXPECT_EQ(pipe->output, "xyz");
  std::string file = dir_.File("redirected.txt");
  auto redirect = vm->Run("echo one > " + file + " && echo two >> " + file + "; cat < " + file, kT);
  ASSERT_TRUE(redirect.ok());
  EXPECT_EQ(redirect->output, "one\ntwo");
  auto tab = vm->Run("printf 'x\ty\\n'; echo $((6 * 7))", kT);
  ASSERT_TRUE(tab.ok());
  EXPECT_EQ(tab->output, "x\ty\n42");
  // Markers of other runs inside the output are just output.
  auto fake_end = vm->Run("echo '@@END 999 0'; echo '@@BEGIN 1'; echo last", kT);
  ASSERT_TRUE(fake_end.ok());
  EXPECT_EQ(fake_end->output, "@@END 999 0\n@@BEGIN 1\nlast");
}

TEST_F(VmRunnerTest, CommandReadingStdinDoesNotEatTheNextCommand) {
  auto vm = BootOrDie(Options(StandardBody()));
  ASSERT_NE(vm, nullptr);
  auto cat = vm->Run("cat; read x; echo \"read status $?\"", kT);
  ASSERT_TRUE(cat.ok()) << cat.error().ToString();
  EXPECT_EQ(cat->output, "read status 1");
  auto next = vm->Run("echo still here", kT);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->output, "still here");
}

TEST_F(VmRunnerTest, RejectsCommandsTheConsoleCannotCarry) {
  auto vm = BootOrDie(Options(StandardBody()));
  ASSERT_NE(vm, nullptr);
  auto nl = vm->Run("echo a\necho b", kT);
  ASSERT_FALSE(nl.ok());
  EXPECT_EQ(nl.error().code, EINVAL);
  auto ctrl = vm->Run(std::string("echo \x03"), kT);
  ASSERT_FALSE(ctrl.ok());
  EXPECT_EQ(ctrl.error().code, EINVAL);
  auto long_cmd = vm->Run("echo " + std::string(Vm::kMaxCommandBytes, 'x'), kT);
  ASSERT_FALSE(long_cmd.ok());
  EXPECT_EQ(long_cmd.error().code, EINVAL);
  // The VM is still usable.
  auto ok = vm->RunOk("echo ok", kT);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, "ok");
}

TEST_F(VmRunnerTest, LongOutputArrivesWhole) {
  auto vm = BootOrDie(Options(StandardBody()));
  ASSERT_NE(vm, nullptr);
  auto r = vm->Run("i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done", kT * 3);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  std::string expected;
  for (int i = 0; i < 20000; ++i) expected += (i ? "\nline" : "line") + std::to_string(i);
  EXPECT_EQ(r->output.size(), expected.size());
  EXPECT_TRUE(r->output == expected);
}

TEST_F(VmRunnerTest, IgnoresNoiseAndHandlesCrlfAndPartialLines) {
  // After the ready marker: a noise line, a stale END for id 1 (must not end run 1), and an
  // unterminated fragment that the agent's "@@BEGIN 1" completes. The agent's output goes
  // through `sed` adding \r to every line, as a tty does.
  auto vm =
      BootOrDie(Options("echo 'noise before ready'\n"
                        "echo @@VSOCKD-GUEST-READY\n"
                        "echo 'kernel: noise after ready'\n"
                        "echo '@@END 1 9'\n"
                        "printf 'fragment'\n"
                        "/bin/sh '" +
                        kAgent + "' | sed -u 's/$/\\r/'\nexit 0\n"));
  ASSERT_NE(vm, nullptr);
  auto r = vm->Run("echo hi; echo there", kT);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->exit_status, 0);
  EXPECT_EQ(r->output, "hi\nthere");
  auto f = vm->Run("printf x; exit 4", kT);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->exit_status, 4);
  EXPECT_EQ(f->output, "x");
  // Everything is in the console log and the tail, without \r in the tail.
  std::string log = ReadFile(dir_.File("console.log"));
  EXPECT_THAT(log, HasSubstr("noise before ready"));
  EXPECT_THAT(log, HasSubstr("kernel: noise after ready"));
  std::string tail = vm->ConsoleTail(100);
  EXPECT_THAT(tail, HasSubstr("fragment@@BEGIN 1"));
  EXPECT_EQ(tail.find('\r'), std::string::npos);
  EXPECT_THAT(vm->ConsoleTail(1), HasSubstr("@@END 2 4"));
}

TEST_F(VmRunnerTest, TimeoutKillsTheWedgedVm) {
  auto vm = BootOrDie(Options(StandardBody()));
  ASSERT_NE(vm, nullptr);
  pid_t qemu = vm->pid();
  std::string pidfile = dir_.File("sleep.pid");
  auto r = vm->Run("echo started; sh -c 'echo $$ > " + pidfile + "; exec sleep 60'",
                   std::chrono::milliseconds(1500));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ETIMEDOUT);
  EXPECT_THAT(r.error().ToString(), HasSubstr("exec sleep 60"));
  EXPECT_THAT(r.error().ToString(), HasSubstr("started"));  // output so far
  EXPECT_FALSE(vm->Running());
  EXPECT_TRUE(Gone(qemu));
  // The command's own process went with QEMU's process group.
  pid_t sleeper = static_cast<pid_t>(std::atoi(ReadFile(pidfile).c_str()));
  ASSERT_GT(sleeper, 0);
  EXPECT_TRUE(WaitFor([&] { return Gone(sleeper); }));
  auto after = vm->Run("echo hi", kT);
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.error().code, EPIPE);
}

TEST_F(VmRunnerTest, BootFailsWithTheConsoleTailWhenQemuExits) {
  auto vm = Vm::Boot(Options(
      "echo 'qemu-system-x86_64: -chardev socket,id=vu0,path=x: Failed to connect to x' >&2\n"
      "exit 1\n"));
  ASSERT_FALSE(vm.ok());
  EXPECT_EQ(vm.error().code, EPIPE);
  EXPECT_THAT(vm.error().ToString(), HasSubstr("Failed to connect"));
  EXPECT_THAT(vm.error().ToString(), HasSubstr("exit status 1"));
  EXPECT_TRUE(Gone(FakePid()));
}

TEST_F(VmRunnerTest, BootFailsWhenQemuCannotBeFound) {
  VmOptions o = Options(StandardBody());
  o.qemu = dir_.File("no-such-qemu");
  auto vm = Vm::Boot(o);
  ASSERT_FALSE(vm.ok());
  EXPECT_EQ(vm.error().code, ENOENT);
  EXPECT_FALSE(CheckQemu(o.qemu).ok());
  EXPECT_TRUE(CheckQemu("sh").ok());
}

TEST_F(VmRunnerTest, BootFailsOnTheFailureMarkerAndKills) {
  auto vm =
      Vm::Boot(Options("echo booting\n"
                       "echo '@@VSOCKD-GUEST-FAILED /dev/vsock did not appear'\n"
                       "exec sleep 60\n"));
  ASSERT_FALSE(vm.ok());
  EXPECT_EQ(vm.error().code, EIO);
  EXPECT_THAT(vm.error().ToString(), HasSubstr("/dev/vsock did not appear"));
  EXPECT_THAT(vm.error().ToString(), HasSubstr("booting"));
  EXPECT_TRUE(Gone(FakePid()));
}

TEST_F(VmRunnerTest, BootTimesOutAndKills) {
  VmOptions o = Options("echo 'stuck in firmware'\nexec sleep 60\n");
  o.boot_timeout = std::chrono::milliseconds(1000);
  auto vm = Vm::Boot(o);
  ASSERT_FALSE(vm.ok());
  EXPECT_EQ(vm.error().code, ETIMEDOUT);
  EXPECT_THAT(vm.error().ToString(), HasSubstr("stuck in firmware"));
  EXPECT_TRUE(Gone(FakePid()));
}

TEST_F(VmRunnerTest, PoweroffWaitsForExitStatusZero) {
  auto vm = BootOrDie(Options(StandardBody()));
  ASSERT_NE(vm, nullptr);
  pid_t qemu = vm->pid();
  Status off = vm->Poweroff(kT);
  ASSERT_TRUE(off.ok()) << off.error().ToString();
  EXPECT_FALSE(vm->Running());
  EXPECT_TRUE(WIFEXITED(vm->wait_status()) && WEXITSTATUS(vm->wait_status()) == 0);
  EXPECT_TRUE(Gone(qemu));
  auto again = vm->Poweroff(kT);
  EXPECT_FALSE(again.ok());
}

TEST_F(VmRunnerTest, PoweroffReportsANonZeroExit) {
  auto vm = BootOrDie(Options("echo @@VSOCKD-GUEST-READY\n/bin/sh '" + kAgent + "'\nexit 3\n"));
  ASSERT_NE(vm, nullptr);
  Status off = vm->Poweroff(kT);
  ASSERT_FALSE(off.ok());
  EXPECT_THAT(off.error().ToString(), HasSubstr("exit status 3"));
}

TEST_F(VmRunnerTest, CommandThatEndsTheGuestIsReported) {
  auto vm = BootOrDie(Options(StandardBody()));
  ASSERT_NE(vm, nullptr);
  auto r = vm->Run("echo bye; kill -KILL $PPID", kT);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, EPIPE);
  EXPECT_THAT(r.error().ToString(), HasSubstr("exit status 0"));
  EXPECT_THAT(r.error().ToString(), HasSubstr("bye"));
}

TEST_F(VmRunnerTest, SpawnRunsInTheBackground) {
  auto vm = BootOrDie(Options(StandardBody()));
  ASSERT_NE(vm, nullptr);
  std::string log = dir_.File("bg.log");
  std::string gate = dir_.File("gate");
  // The background job waits for a file that only appears after Spawn returned.
  ASSERT_TRUE(vm->Spawn("echo started; while [ ! -e " + gate + " ]; do sleep 0.05; done; echo done",
                        log, kT)
                  .ok());
  auto touch = vm->RunOk("touch " + gate, kT);
  ASSERT_TRUE(touch.ok());
  EXPECT_TRUE(WaitFor([&] { return ReadFile(log) == "started\ndone\n"; }, kT)) << ReadFile(log);
}

TEST_F(VmRunnerTest, DestructorKillsAndReaps) {
  auto vm = BootOrDie(Options(StandardBody()));
  ASSERT_NE(vm, nullptr);
  pid_t qemu = vm->pid();
  ASSERT_EQ(::kill(qemu, 0), 0);
  vm.reset();
  // Reaped by us: the pid no longer exists at all (not even as a zombie).
  EXPECT_EQ(::kill(qemu, 0), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST_F(VmRunnerTest, QemuDiesWithTheProcessThatStartedIt) {
  // A child process boots the fake and dies without any cleanup (as on a crash or a ctest
  // timeout): PR_SET_PDEATHSIG must take QEMU down with it.
  // The fake ignores the end of its stdin (as QEMU does), so only the signal can end it.
  int report[2];
  ASSERT_EQ(::pipe(report), 0);
  VmOptions o = Options("echo @@VSOCKD-GUEST-READY\nexec sleep 60\n");
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(report[0]);
    auto vm = Vm::Boot(o);
    pid_t qemu = vm.ok() ? (*vm)->pid() : -1;
    ssize_t ignored = ::write(report[1], &qemu, sizeof qemu);
    (void)ignored;
    ::_exit(0);  // no destructors
  }
  ::close(report[1]);
  pid_t qemu = -1;
  ASSERT_EQ(::read(report[0], &qemu, sizeof qemu), static_cast<ssize_t>(sizeof qemu));
  ::close(report[0]);
  int status;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_GT(qemu, 0);
  EXPECT_TRUE(WaitFor([&] { return Gone(qemu); }, kT));
}

TEST(VmImageTest, CheckImageSaysWhatIsMissingAndHowToBuildIt) {
  TempDir dir;
  Status empty = CheckImage(dir.path());
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.error().ToString(), HasSubstr("vmlinux"));
  EXPECT_THAT(empty.error().ToString(), HasSubstr("initrd.cpio.gz"));
  EXPECT_THAT(empty.error().ToString(), HasSubstr("scripts/build-guest.sh"));
  std::ofstream(dir.File("vmlinux")) << "ELF";
  Status half = CheckImage(dir.path());
  ASSERT_FALSE(half.ok());
  EXPECT_THAT(half.error().ToString(), Not(HasSubstr("/vmlinux")));
  EXPECT_THAT(half.error().ToString(), HasSubstr("initrd.cpio.gz"));
  std::ofstream(dir.File("initrd.cpio.gz")) << "gz";
  EXPECT_TRUE(CheckImage(dir.path()).ok());
}

TEST(VmImageTest, DefaultImageDirHonoursTheEnvironment) {
  const char* old = std::getenv("VSOCKD_GUEST_IMAGE");
  std::string saved = old != nullptr ? old : "";
  ::unsetenv("VSOCKD_GUEST_IMAGE");
  EXPECT_EQ(DefaultImageDir(), std::string(VSOCKD_SOURCE_DIR) + "/build-guest/image");
  ::setenv("VSOCKD_GUEST_IMAGE", "/some/where", 1);
  EXPECT_EQ(DefaultImageDir(), "/some/where");
  if (old != nullptr) {
    ::setenv("VSOCKD_GUEST_IMAGE", saved.c_str(), 1);
  } else {
    ::unsetenv("VSOCKD_GUEST_IMAGE");
  }
}

}  // namespace
}  // namespace vsockd::vmtest
