#include "tests/vm/vm.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace vsockd::vmtest {
namespace {

constexpr const char kReadyMarker[] = "@@VSOCKD-GUEST-READY";
constexpr const char kFailedMarker[] = "@@VSOCKD-GUEST-FAILED";

// QEMU's option syntax: a ',' inside a value is written ",,".
std::string QemuEscape(const std::string& value) {
  std::string out;
  for (char c : value) {
    out.push_back(c);
    if (c == ',') out.push_back(',');
  }
  return out;
}

bool IsExecutableFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// Resolves a program name the way execvp would, in the parent: the child of a possibly
// multi-threaded process may only call async-signal-safe functions before exec.
Result<std::string> FindExecutable(const std::string& name) {
  if (name.empty()) return MakeError(EINVAL, "empty program name");
  if (name.find('/') != std::string::npos) {
    if (IsExecutableFile(name)) return name;
    return MakeError(ENOENT, "'{}' is not an executable file", name);
  }
  const char* path_env = std::getenv("PATH");
  std::string path = path_env != nullptr ? path_env : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(start, end - start);
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
    if (IsExecutableFile(candidate)) return candidate;
    start = end + 1;
  }
  return MakeError(ENOENT, "'{}' not found in PATH", name);
}

std::string StripTrailingCr(std::string line) {
  while (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

std::string DescribeWaitStatus(int status) {
  if (status < 0) return "unknown status";
  if (WIFEXITED(status)) return fmt::format("exit status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return fmt::format("wait status {:#x}", status);
}

long long Millis(std::chrono::milliseconds ms) { return static_cast<long long>(ms.count()); }

}  // namespace

Vm::Vm(VmOptions options) : options_(std::move(options)) {}

Vm::~Vm() { Kill(); }

Result<std::unique_ptr<Vm>> Vm::Boot(const VmOptions& options) {
  // A write to the stdin of a QEMU that just died must fail with EPIPE, not kill the test.
  ::signal(SIGPIPE, SIG_IGN);
  std::unique_ptr<Vm> vm(new Vm(options));
  auto start = Clock::now();
  VSOCKD_RETURN_IF_ERROR(vm->Start());
  VSOCKD_RETURN_IF_ERROR(vm->WaitReady());
  vm->boot_time_ = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  return vm;
}

Status Vm::Start() {
  auto qemu = FindExecutable(options_.qemu);
  if (!qemu.ok()) {
    return MakeError(ENOENT, "{}: cannot run QEMU: {} (scripts/install-deps.sh --test)", Describe(),
                     qemu.error().context);
  }
  if (!options_.console_log_path.empty()) {
    log_.Reset(
        ::open(options_.console_log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (!log_.valid()) return ErrnoError("open console log {}", options_.console_log_path);
  }

  const std::string mem = std::to_string(options_.memory_mib) + "M";
  std::string cmdline = "console=ttyS0 quiet loglevel=3 panic=-1";
  if (!options_.extra_cmdline.empty()) cmdline += " " + options_.extra_cmdline;
  std::vector<std::string> argv = {
      *qemu,
      "-machine",
      "q35,memory-backend=mem",
      "-accel",
      "tcg",
      "-object",
      "memory-backend-memfd,id=mem,size=" + mem + ",share=on",
      "-m",
      mem,
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-serial",
      "stdio",
      "-no-reboot",
      "-kernel",
      options_.image_dir + "/vmlinux",
      "-initrd",
      options_.image_dir + "/initrd.cpio.gz",
      "-append",
      cmdline,
      "-chardev",
      "socket,id=vu0,path=" + QemuEscape(options_.vhost_socket),
      "-device",
      "vhost-user-vsock-pci,chardev=vu0",
  };
  argv.insert(argv.end(), options_.extra_qemu_args.begin(), options_.extra_qemu_args.end());
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  const std::string exec_failed = "vm runner: cannot execute " + *qemu + "\n";

  int in_pipe[2], out_pipe[2];
  if (::pipe2(in_pipe, O_CLOEXEC) != 0) return ErrnoError("pipe2");
  Fd in_read(in_pipe[0]), in_write(in_pipe[1]);
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return ErrnoError("pipe2");
  Fd out_read(out_pipe[0]), out_write(out_pipe[1]);

  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) return ErrnoError("fork");
  if (pid == 0) {
    // Only async-signal-safe calls from here to exec.
    ::setpgid(0, 0);  // own group: Kill() also gets whatever QEMU (or a fake) started
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the parent died before prctl took effect
    ::dup2(in_read.get(), STDIN_FILENO);
    ::dup2(out_write.get(), STDOUT_FILENO);
    ::dup2(out_write.get(), STDERR_FILENO);
    struct sigaction dfl = {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(SIGPIPE, &dfl, nullptr);  // ignored dispositions survive exec
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    // Leak none of the test process's descriptors (vsockd's sockets...) into QEMU.
    ::syscall(SYS_close_range, 3u, ~0u, 0u);
    ::execv(args[0], args.data());
    ssize_t ignored = ::write(STDERR_FILENO, exec_failed.data(), exec_failed.size());
    (void)ignored;
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also here, so Kill() works even if the child has not run yet
  pid_ = pid;
  reaped_ = false;
  wait_status_ = -1;
  stdin_ = std::move(in_write);
  stdout_ = std::move(out_read);
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd >= 0) pidfd_.Reset(pidfd);
  VSOCKD_RETURN_IF_ERROR(SetNonBlocking(stdin_.get()));
  VSOCKD_RETURN_IF_ERROR(SetNonBlocking(stdout_.get()));
  return OkStatus();
}

Status Vm::WaitReady() {
  std::string failure;
  auto end = Pump(Clock::now() + options_.boot_timeout, [&](const std::string& line) {
    if (line.find(kReadyMarker) != std::string::npos) return true;
    size_t pos = line.find(kFailedMarker);
    if (pos != std::string::npos) {
      failure = line.substr(pos);
      return true;
    }
    return false;
  });
  if (!end.ok()) {
    Kill();
    return end.take_error();
  }
  switch (*end) {
    case PumpEnd::kMatched:
      if (failure.empty()) return OkStatus();
      Kill();
      return MakeError(
          EIO, "{}: guest setup failed: {}\n--- console tail ---\n{}\n--- end of console tail",
          Describe(), failure, ConsoleTail());
    case PumpEnd::kTimeout:
      Kill();
      return MakeError(
          ETIMEDOUT,
          "{}: no {} within {} ms (killed it)\n--- console tail ---\n{}\n--- end of console tail",
          Describe(), kReadyMarker, Millis(options_.boot_timeout), ConsoleTail());
    case PumpEnd::kExited:
      break;
  }
  std::string exit = ExitDescription();
  Kill();
  return MakeError(
      EPIPE, "{}: QEMU exited during boot ({})\n--- console tail ---\n{}\n--- end of console tail",
      Describe(), exit, ConsoleTail());
}

Result<GuestRun> Vm::Run(const std::string& command, std::chrono::milliseconds timeout) {
  if (command.size() > kMaxCommandBytes) {
    return MakeError(EINVAL, "{}: command of {} bytes is longer than {} (the guest tty's line)",
                     Describe(), command.size(), kMaxCommandBytes);
  }
  for (unsigned char c : command) {
    if ((c < 0x20 && c != '\t') || c == 0x7f) {
      return MakeError(EINVAL, "{}: command contains control character {:#04x}: '{}'", Describe(),
                       static_cast<unsigned>(c), command);
    }
  }
  if (!Running()) {
    return MakeError(EPIPE, "{}: not running ({}), cannot run '{}'", Describe(), ExitDescription(),
                     command);
  }
  const auto deadline = Clock::now() + timeout;
  const uint64_t id = next_id_++;
  const std::string begin = fmt::format("@@BEGIN {}", id);
  const std::string end_marker = fmt::format("@@END {} ", id);
  if (Status sent = Send(fmt::format("@@RUN {} {}\n", id, command), deadline); !sent.ok()) {
    Kill();  // a console that takes no input is wedged
    return sent.take_error();
  }

  GuestRun run;
  bool begun = false, truncated = false;
  size_t lines = 0;
  auto append = [&](const std::string& text) {
    if (truncated) return;
    if (run.output.size() + text.size() + 1 > kMaxOutputBytes) {
      truncated = true;
      run.output += "\n[output truncated]";
      return;
    }
    if (lines++ > 0) run.output.push_back('\n');
    run.output += text;
  };
  auto pumped = Pump(deadline, [&](const std::string& line) {
    if (!begun) {
      // Exactly the marker, or the marker after a stray fragment (a kernel message without
      // its newline, or the start of our "@@RUN" line that the tty echoed before the agent's
      // `stty -echo` took effect mid-line: "@@RUN 1 @@BEGIN 1"), but not our whole "@@RUN"
      // line echoed.
      if (line.size() >= begin.size() &&
          line.compare(line.size() - begin.size(), begin.size(), begin) == 0 &&
          line != fmt::format("@@RUN {} {}", id, command)) {
        begun = true;
      }
      return false;
    }
    // "@@END <id> <status>" ends the line; output without a final newline precedes it.
    size_t pos = line.rfind(end_marker);
    if (pos != std::string::npos) {
      std::string status = line.substr(pos + end_marker.size());
      if (!status.empty() && status.size() <= 3 &&
          std::all_of(status.begin(), status.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        if (pos > 0) append(line.substr(0, pos));
        run.exit_status = std::atoi(status.c_str());
        return true;
      }
    }
    append(line);
    return false;
  });
  if (!pumped.ok()) {
    Kill();
    return pumped.take_error();
  }
  switch (*pumped) {
    case PumpEnd::kMatched:
      return run;
    case PumpEnd::kTimeout: {
      std::string tail = ConsoleTail();
      Kill();
      return MakeError(ETIMEDOUT,
                       "{}: '{}' did not finish within {} ms ({}; killed the VM)\n"
                       "output so far:\n{}\n--- console tail ---\n{}\n--- end of console tail",
                       Describe(), command, Millis(timeout),
                       begun ? "it started" : "the agent never acknowledged it", run.output, tail);
    }
    case PumpEnd::kExited:
      break;
  }
  return MakeError(
      EPIPE,
      "{}: QEMU exited ({}) while running '{}'\n--- console tail ---\n{}\n--- end of console tail",
      Describe(), ExitDescription(), command, ConsoleTail());
}

Result<std::string> Vm::RunOk(const std::string& command, std::chrono::milliseconds timeout) {
  auto run = Run(command, timeout);
  if (!run.ok()) return run.take_error();
  if (run->exit_status != 0) {
    return MakeError(EIO, "{}: '{}' exited with status {}; output:\n{}", Describe(), command,
                     run->exit_status, run->output);
  }
  return std::move(run->output);
}

Status Vm::Spawn(const std::string& command, const std::string& guest_log_path,
                 std::chrono::milliseconds timeout) {
  auto out = RunOk(fmt::format("({}) > {} 2>&1 &", command, guest_log_path), timeout);
  if (!out.ok()) return out.take_error();
  return OkStatus();
}

Status Vm::WaitForVsockDevice(std::chrono::milliseconds timeout) {
  const long long tries = std::max<long long>(1, Millis(timeout) / 100);
  auto r = Run(fmt::format("d=/sys/bus/virtio/drivers/vmw_vsock_virtio_transport; i=0; "
                           "until ls $d 2>/dev/null | grep -q '^virtio'; do "
                           "i=$((i+1)); if [ $i -gt {} ]; then ls -l /sys/bus/virtio/devices/ $d; "
                           "exit 1; fi; sleep 0.1; done",
                           tries),
               timeout + std::chrono::seconds(30));
  if (!r.ok()) return r.take_error();
  if (r->exit_status != 0) {
    return MakeError(ENODEV, "{}: the virtio-vsock driver did not bind within {} ms:\n{}",
                     Describe(), Millis(timeout), r->output);
  }
  return OkStatus();
}

Status Vm::Poweroff(std::chrono::milliseconds timeout) {
  if (!Running()) {
    return MakeError(EPIPE, "{}: already exited ({})", Describe(), ExitDescription());
  }
  const auto deadline = Clock::now() + timeout;
  const uint64_t id = next_id_++;
  if (Status sent = Send(fmt::format("@@RUN {} {}\n", id, options_.poweroff_command), deadline);
      !sent.ok()) {
    Kill();
    return sent.take_error();
  }
  auto end = Pump(deadline, [](const std::string&) { return false; });
  if (!end.ok()) {
    Kill();
    return end.take_error();
  }
  if (*end != PumpEnd::kExited) {
    std::string tail = ConsoleTail();
    Kill();
    return MakeError(ETIMEDOUT,
                     "{}: still running {} ms after '{}' (killed it)\n--- console tail "
                     "---\n{}\n--- end of console tail",
                     Describe(), Millis(timeout), options_.poweroff_command, tail);
  }
  if (!WIFEXITED(wait_status_) || WEXITSTATUS(wait_status_) != 0) {
    return MakeError(
        EIO, "{}: QEMU ended with {} after '{}'\n--- console tail ---\n{}\n--- end of console tail",
        Describe(), ExitDescription(), options_.poweroff_command, ConsoleTail());
  }
  return OkStatus();
}

void Vm::Kill() {
  if (pid_ <= 0) return;
  if (!reaped_) {
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    wait_status_ = status;
  }
  stdin_.Reset();
  stdout_.Reset();
  pidfd_.Reset();
}

bool Vm::Running() {
  if (pid_ <= 0 || reaped_) return false;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    wait_status_ = status;
    // Whatever QEMU (or a fake standing in for it) left in its group goes with it.
    ::kill(-pid_, SIGKILL);
    return false;
  }
  return true;
}

std::string Vm::ConsoleTail(size_t n_lines) const {
  std::string out;
  size_t first = tail_.size() > n_lines ? tail_.size() - n_lines : 0;
  for (size_t i = first; i < tail_.size(); ++i) {
    out += tail_[i];
    out.push_back('\n');
  }
  std::string partial = StripTrailingCr(buffer_);
  if (!partial.empty()) out += partial;
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

Result<Vm::PumpEnd> Vm::Pump(Clock::time_point deadline,
                             const std::function<bool(const std::string&)>& on_line) {
  char chunk[16384];
  // Reads what is there now; false on EOF.
  auto read_some = [&]() -> Result<bool> {
    while (stdout_.valid()) {
      ssize_t n = ::read(stdout_.get(), chunk, sizeof chunk);
      if (n > 0) {
        LogRaw(chunk, static_cast<size_t>(n));
        buffer_.append(chunk, static_cast<size_t>(n));
        if (static_cast<size_t>(n) < sizeof chunk) return true;
        continue;
      }
      if (n == 0) {
        stdout_.Reset();
        return false;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return true;
      return ErrnoError("{}: read console", Describe());
    }
    return false;
  };

  while (true) {
    if (TakeLines(on_line)) return PumpEnd::kMatched;
    if (!Running()) {
      // Drain what QEMU wrote before exiting (the pipe may still be held open by leftovers
      // of its group, so stop at EAGAIN rather than wait for EOF).
      auto more = read_some();
      if (!more.ok()) return more.take_error();
      if (TakeLines(on_line)) return PumpEnd::kMatched;
      return PumpEnd::kExited;
    }
    auto now = Clock::now();
    if (now >= deadline) return PumpEnd::kTimeout;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now) +
                std::chrono::milliseconds(1);
    // Without a pidfd (kernel < 5.3) we notice QEMU's exit by EOF, or by polling waitpid
    // every 100 ms when the pipe stays open.
    if (!pidfd_.valid()) left = std::min(left, std::chrono::milliseconds(100));
    pollfd fds[2];
    nfds_t nfds = 0;
    if (stdout_.valid()) fds[nfds++] = {stdout_.get(), POLLIN, 0};
    if (pidfd_.valid()) fds[nfds++] = {pidfd_.get(), POLLIN, 0};
    int timeout_ms = static_cast<int>(std::min<long long>(Millis(left), 1 << 30));
    int r = nfds > 0 ? ::poll(fds, nfds, timeout_ms) : ::poll(nullptr, 0, timeout_ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("{}: poll", Describe());
    }
    if (r == 0) continue;
    if (stdout_.valid() && fds[0].revents != 0) {
      auto more = read_some();
      if (!more.ok()) return more.take_error();
    }
    // The pidfd becoming readable is picked up by Running() at the top of the loop.
  }
}

Status Vm::Send(const std::string& line, Clock::time_point deadline) {
  if (log_.valid()) {
    // Not part of the console output, but it tells a reader of the log what was asked.
    std::string note = "[vm runner -> guest] " + line;
    ssize_t ignored = ::write(log_.get(), note.data(), note.size());
    (void)ignored;
  }
  size_t done = 0;
  while (done < line.size()) {
    if (!stdin_.valid()) return MakeError(EPIPE, "{}: console input closed", Describe());
    ssize_t n = ::write(stdin_.get(), line.data() + done, line.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) {
      return ErrnoError("{}: write to the console ({})", Describe(),
                        Running() ? "running" : ExitDescription());
    }
    auto now = Clock::now();
    if (now >= deadline) {
      return MakeError(
          ETIMEDOUT,
          "{}: the console does not take input\n--- console tail ---\n{}\n--- end of console tail",
          Describe(), ConsoleTail());
    }
    pollfd pfd = {stdin_.get(), POLLOUT, 0};
    int ms = static_cast<int>(
        Millis(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now)) + 1);
    if (::poll(&pfd, 1, ms) < 0 && errno != EINTR) return ErrnoError("poll");
  }
  return OkStatus();
}

bool Vm::TakeLines(const std::function<bool(const std::string&)>& on_line) {
  size_t start = 0;
  bool matched = false;
  while (!matched) {
    size_t nl = buffer_.find('\n', start);
    if (nl == std::string::npos) break;
    std::string line = StripTrailingCr(buffer_.substr(start, nl - start));
    start = nl + 1;
    RecordLine(line);
    matched = on_line(line);
  }
  buffer_.erase(0, start);
  // A runaway line without '\n' (binary output) is cut rather than buffered forever.
  if (!matched && buffer_.size() > kMaxLineBytes) {
    std::string line = std::move(buffer_);
    buffer_.clear();
    RecordLine(line);
    matched = on_line(line);
  }
  return matched;
}

void Vm::RecordLine(const std::string& line) {
  tail_.push_back(line.size() <= kMaxTailLineBytes ? line
                                                   : line.substr(0, kMaxTailLineBytes) + "[...]");
  while (tail_.size() > kTailLines) tail_.pop_front();
}

void Vm::LogRaw(const char* data, size_t len) {
  if (!log_.valid()) return;
  ssize_t ignored = ::write(log_.get(), data, len);
  (void)ignored;
}

std::string Vm::Describe() const { return fmt::format("vm '{}' (pid {})", options_.name, pid_); }

std::string Vm::ExitDescription() const {
  if (pid_ <= 0) return "never started";
  if (!reaped_) return "running";
  return DescribeWaitStatus(wait_status_);
}

std::string DefaultQemu() {
  const char* env = std::getenv("VSOCKD_QEMU");
  if (env != nullptr && *env != '\0') return env;
  return "qemu-system-x86_64";
}

std::string DefaultImageDir() {
  const char* env = std::getenv("VSOCKD_GUEST_IMAGE");
  if (env != nullptr && *env != '\0') return env;
  return std::string(VSOCKD_SOURCE_DIR) + "/build-guest/image";
}

Status CheckImage(const std::string& dir) {
  std::vector<std::string> missing;
  for (const char* name : {"vmlinux", "initrd.cpio.gz"}) {
    std::string path = dir + "/" + name;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
      missing.push_back(path);
    }
  }
  if (missing.empty()) return OkStatus();
  std::string list;
  for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
  return MakeError(ENOENT,
                   "guest image incomplete: missing {}. Build it with scripts/build-guest.sh "
                   "(writes build-guest/image/), or point VSOCKD_GUEST_IMAGE at an image "
                   "directory",
                   list);
}

Status CheckQemu(const std::string& qemu) {
  auto found = FindExecutable(qemu);
  if (!found.ok()) {
    return MakeError(ENOENT, "cannot run QEMU: {} (install it: scripts/install-deps.sh --test)",
                     found.error().context);
  }
  return OkStatus();
}

}  // namespace vsockd::vmtest
