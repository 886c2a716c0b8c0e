// Vm: one real Linux guest under qemu-system-x86_64 (TCG, q35, memfd shared memory,
// vhost-user-vsock-pci attached to a running vsockd), driven over its serial console.
//
// The guest image comes from scripts/build-guest.sh (<out>/image/{vmlinux,initrd.cpio.gz}).
// Its /init prints "@@VSOCKD-GUEST-READY" and execs the command agent (guest/rootfs/agent),
// which speaks a line protocol on the console: we send "@@RUN <id> <command>", it answers
// "@@BEGIN <id>", the command's output, "@@END <id> <exit-status>". Lines outside a
// BEGIN/END pair (kernel messages, QEMU's own stderr, tty echo) are logged and ignored.
//
// Cleanup is unconditional: QEMU runs in its own process group with PR_SET_PDEATHSIG(SIGKILL)
// (it dies with the test process's main thread, even on a crash or a ctest timeout), a
// timeout or a failed boot kills it, and the destructor SIGKILLs the group and reaps it.
//
// Callers: the VM scenario tests in this folder. Threading: a Vm belongs to one thread, and
// must be created on the thread that outlives it (PDEATHSIG fires when the creating *thread*
// exits). Everything is blocking with deadlines: poll() on the console pipe and on a pidfd
// for QEMU's exit, no busy waiting. Boot() sets SIGPIPE to ignored for the whole process
// (writing to a QEMU that just died must be an error, not a signal).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"

namespace vsockd::vmtest {

// The QEMU the VM tests run: $VSOCKD_QEMU if set (e.g. QEMU 10 unpacked by
// scripts/fetch-qemu.sh), else qemu-system-x86_64 from PATH.
std::string DefaultQemu();

struct VmOptions {
  std::string image_dir;     // holds vmlinux and initrd.cpio.gz (DefaultImageDir())
  std::string vhost_socket;  // vsockd's vhost-user socket (--socket); must already listen
  std::string name = "vm";   // for messages
  uint32_t memory_mib = 512;
  // A name looked up in PATH or a path (DefaultQemu()); the runner's tests pass a fake.
  std::string qemu = DefaultQemu();
  std::vector<std::string> extra_qemu_args;
  std::string extra_cmdline;     // appended to the kernel command line
  std::string console_log_path;  // if set: everything the console printed (appended)
  std::chrono::milliseconds boot_timeout = std::chrono::seconds(120);  // TCG is slow
  // What Poweroff() runs in the guest. Only the runner's unit tests change it: their fake
  // "guest" is the host's /bin/sh, where `reboot -f` must never run.
  std::string poweroff_command = "reboot -f";
};

struct GuestRun {
  int exit_status = -1;
  // What the command printed (stdout and stderr interleaved), lines joined with '\n' and
  // the trailing '\r's of each line removed; the final newline is not included ("echo hi"
  // gives "hi").
  std::string output;
};

class Vm {
 public:
  // Starts QEMU and waits for "@@VSOCKD-GUEST-READY". Fails (and leaves nothing running)
  // with the console tail in the message if QEMU exits, the guest prints
  // "@@VSOCKD-GUEST-FAILED" (EIO), or boot_timeout passes (ETIMEDOUT). QEMU exiting is EPIPE
  // (the console went away), here and in Run().
  static Result<std::unique_ptr<Vm>> Boot(const VmOptions& options);

  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  // Runs `command` with `sh -c` in the guest (stdin /dev/null, stderr into the output).
  // A single line: no newline or other control character except tab, at most
  // kMaxCommandBytes (EINVAL otherwise). On timeout: ETIMEDOUT with the console tail, and the
  // VM is killed (it is wedged: the agent is busy with the command). If QEMU exits first
  // (e.g. the command powered it off): EPIPE with the exit status and the tail.
  Result<GuestRun> Run(const std::string& command, std::chrono::milliseconds timeout);
  // Run() that also requires exit status 0; the error carries the status and the output.
  Result<std::string> RunOk(const std::string& command, std::chrono::milliseconds timeout);
  // Starts `command` in the background in the guest: `(command) > guest_log_path 2>&1 &`.
  Status Spawn(const std::string& command, const std::string& guest_log_path,
               std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Waits until the guest's virtio-vsock driver is bound to the device: /init only waits for
  // /dev/vsock (the vsock core), and the transport probes the PCI device asynchronously, so a
  // socket made right after boot could find no transport yet.
  Status WaitForVsockDevice(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Asks the guest to power off (options.poweroff_command) and waits for QEMU to exit; OK
  // only if it exited with status 0. Kills QEMU on timeout.
  Status Poweroff(std::chrono::milliseconds timeout = std::chrono::seconds(60));
  // SIGKILLs QEMU's process group and reaps QEMU. Idempotent.
  void Kill();
  // QEMU has not exited (reaps it if it has).
  bool Running();
  // QEMU's pid (the pid it had, after it exited), and its wait status once reaped (-1 before).
  pid_t pid() const { return pid_; }
  int wait_status() const { return wait_status_; }
  // The last n console lines (including an unterminated last line), joined with '\n'.
  std::string ConsoleTail(size_t n_lines = 40) const;
  const VmOptions& options() const { return options_; }
  // How long Boot() waited for the ready marker.
  std::chrono::milliseconds boot_time() const { return boot_time_; }

  static constexpr size_t kMaxCommandBytes = 3500;

 private:
  explicit Vm(VmOptions options);
  Status Start();
  Status WaitReady();

  using Clock = std::chrono::steady_clock;
  enum class PumpEnd { kMatched, kTimeout, kExited };
  // Reads console output, feeding each complete line (\r stripped) to on_line, until
  // on_line returns true, the deadline passes, or QEMU exits (after draining the pipe).
  Result<PumpEnd> Pump(Clock::time_point deadline,
                       const std::function<bool(const std::string&)>& on_line);
  Status Send(const std::string& line, Clock::time_point deadline);
  // Takes complete lines out of buffer_; records them in the tail. Returns true once on_line
  // did.
  bool TakeLines(const std::function<bool(const std::string&)>& on_line);
  void RecordLine(const std::string& line);
  void LogRaw(const char* data, size_t len);
  std::string Describe() const;  // "vm 'name' (pid N)"
  std::string ExitDescription() const;

  VmOptions options_;
  pid_t pid_ = -1;
  bool reaped_ = true;
  int wait_status_ = -1;
  Fd stdin_;                      // write end of QEMU's stdin (the guest's serial input)
  Fd stdout_;                     // read end of QEMU's stdout+stderr (the guest's serial output)
  Fd pidfd_;                      // QEMU's exit, for poll(); invalid if pidfd_open is unavailable
  Fd log_;                        // options.console_log_path
  std::string buffer_;            // bytes after the last complete line
  std::deque<std::string> tail_;  // last kTailLines complete lines
  uint64_t next_id_ = 1;
  std::chrono::milliseconds boot_time_{0};

  static constexpr size_t kTailLines = 400;
  static constexpr size_t kMaxOutputBytes = 64u << 20;
  static constexpr size_t kMaxLineBytes = 1u << 20;
  static constexpr size_t kMaxTailLineBytes = 4096;
};

// The guest image directory: $VSOCKD_GUEST_IMAGE if set, else <source dir>/build-guest/image
// (scripts/build-guest.sh's default output).
std::string DefaultImageDir();
// OK if `dir` holds what Boot() needs; otherwise says what is missing and how to build it.
Status CheckImage(const std::string& dir);
// OK if `qemu` (a name looked up in PATH, or a path) can be executed.
Status CheckQemu(const std::string& qemu = DefaultQemu());

}  // namespace vsockd::vmtest
