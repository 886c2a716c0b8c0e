#include "tests/integration/harness.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "base/log.h"
#include "base/unix_socket.h"

namespace vsockd::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/vsockd-it-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  const char* made = ::mkdtemp(buf.data());
  path_ = made != nullptr ? made : "";
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!path_.empty()) std::filesystem::remove_all(path_, ec);
}

Subprocess::~Subprocess() {
  if (pid_ > 0) Stop(SIGKILL, std::chrono::seconds(5));
}

Status Subprocess::Start(const std::vector<std::string>& argv, const std::string& log_path) {
  log_path_ = log_path;
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) return ErrnoError("fork");
  if (pid == 0) {
    // A test that dies (a crash, a ctest timeout, SIGKILL) must not leave vsockd or a host
    // program running: the child dies with its parent.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log >= 0) {
      ::dup2(log, STDOUT_FILENO);
      ::dup2(log, STDERR_FILENO);
    }
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  pid_ = pid;
  return OkStatus();
}

bool Subprocess::Running() {
  if (pid_ <= 0) return false;
  int status;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

int Subprocess::Stop(int sig, std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, sig);
  return Wait(timeout);
}

int Subprocess::Wait(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return -1;
}

std::string Subprocess::Log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string BuiltBinary(const std::string& name) {
  return std::string(VSOCKD_BINARY_DIR) + "/" + name;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

bool UnixListening(const std::string& path) {
  std::ifstream in("/proc/net/unix");
  std::string line;
  while (std::getline(in, line)) {
    // "Num RefCount Protocol Flags Type St Inode Path": the path is the last field.
    if (line.size() <= path.size() || line.compare(line.size() - path.size(), path.size(), path) ||
        line[line.size() - path.size() - 1] != ' ') {
      continue;
    }
    std::istringstream fields(line);
    std::string num, refs, proto, flags;
    fields >> num >> refs >> proto >> flags;
    if ((std::strtoul(flags.c_str(), nullptr, 16) & 0x10000u) != 0) return true;
  }
  return false;
}

std::string GuardBinary() { return BuiltBinary("tests/guard/no_vsock_guard"); }
std::string ShimLibrary() { return BuiltBinary("src/preload/libvsock_preload.so"); }

std::vector<std::string> Shimmed(const std::string& run_dir) {
  return {GuardBinary(),
          "env",
          "LD_PRELOAD=" + ShimLibrary(),
          "VSOCKD_RUN_DIR=" + run_dir,
          "PYTHONUNBUFFERED=1",
          "PYTHONDONTWRITEBYTECODE=1"};
}

std::vector<std::string> Guarded(std::vector<std::string> argv) {
  argv.insert(argv.begin(), GuardBinary());
  return argv;
}

std::string GuardedCommand(const std::string& built_binary) {
  return ShellLine({GuardBinary(), BuiltBinary(built_binary)});
}

std::string SeedProgram(const std::string& name) { return SourceFile("tests/seed/" + name); }

std::string SourceFile(const std::string& relative) {
  return std::string(VSOCKD_SOURCE_DIR) + "/" + relative;
}

std::string ShellLine(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    out += '\'';
    for (char c : a) {
      if (c == '\'') {
        out += "'\\''";
      } else {
        out += c;
      }
    }
    out += '\'';
  }
  return out;
}

Daemon::Daemon(const TempDir& dir, uint64_t cid, std::vector<std::string> extra)
    : socket_(dir.File("vhost.sock")),
      uds_(dir.File("vsock")),
      log_(dir.File("vsockd.log")),
      cid_(cid),
      extra_(std::move(extra)) {}

Daemon::~Daemon() { proc_.Stop(); }

Status Daemon::Start() {
  std::vector<std::string> argv = {BuiltBinary("src/daemon/vsockd"),
                                   "--socket",
                                   socket_,
                                   "--guest-cid",
                                   std::to_string(cid_),
                                   "--uds-path",
                                   uds_};
  argv.insert(argv.end(), extra_.begin(), extra_.end());
  VSOCKD_RETURN_IF_ERROR(proc_.Start(argv, log_));
  bool up = WaitFor([&] { return UnixListening(socket_) && UnixListening(uds_); });
  if (!up) {
    return MakeError(ETIMEDOUT, "vsockd did not create its sockets; log:\n{}", Log());
  }
  return OkStatus();
}

pid_t FirstChildOf(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  pid_t child = -1;
  in >> child;
  return in ? child : -1;
}

long Daemon::RssKb() const {
  std::ifstream in("/proc/" + std::to_string(proc_.pid()) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  }
  return -1;
}

LoopThread::LoopThread() {
  auto loop = EventLoop::Create();
  if (!loop.ok()) std::abort();
  loop_ = std::move(*loop);
  thread_ = std::thread([this] { loop_->Run(); });
}

LoopThread::~LoopThread() {
  loop_->Stop();
  thread_.join();
}

bool WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

RunResult RunCommand(const std::string& cmd) {
  RunResult r;
  std::string full = "timeout 60 " + cmd + " 2>&1";
  FILE* p = ::popen(full.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

Result<std::string> ReadLine(int fd, size_t max) {
  std::string line;
  while (line.size() < max) {
    char c;
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read reply line");
    if (n == 0) return MakeError(ECONNRESET, "EOF before end of line (got '{}')", line);
    if (c == '\n') return line;
    line.push_back(c);
  }
  return MakeError(EMSGSIZE, "reply line too long");
}

std::string ReadToEof(int fd, int* err) {
  std::string out;
  char buf[65536];
  if (err != nullptr) *err = 0;
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && err != nullptr) *err = errno;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

void SetSocketTimeouts(int fd, std::chrono::seconds timeout) {
  timeval tv = {static_cast<time_t>(timeout.count()), 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

Result<Fd> HybridConnect(const std::string& uds_path, uint32_t port, std::string* reply, int type) {
  const bool seqpacket = type == SOCK_SEQPACKET;
  auto fd = ConnectUnix(seqpacket ? uds_path + ".seqpacket" : uds_path, false, type);
  if (!fd.ok()) return fd.take_error();
  std::string cmd = "CONNECT " + std::to_string(port) + "\n";
  VSOCKD_RETURN_IF_ERROR(WriteAll(fd->get(), cmd.data(), cmd.size()));
  std::string line;
  if (seqpacket) {
    char buf[256];
    ssize_t n;
    do {
      n = ::recv(fd->get(), buf, sizeof buf, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return ErrnoError("recv reply message");
    line.assign(buf, static_cast<size_t>(n));
    if (!line.empty() && line.back() == '\n') line.pop_back();
  } else {
    auto l = ReadLine(fd->get());
    if (!l.ok()) return l.take_error();
    line = std::move(*l);
  }
  if (reply != nullptr) *reply = line;
  if (line.rfind("OK ", 0) != 0) {
    return MakeError(ECONNREFUSED, "hybrid connect to port {} refused: '{}'", port, line);
  }
  return std::move(*fd);
}

}  // namespace vsockd::testing
