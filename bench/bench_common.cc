#include "bench/bench_common.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "base/unix_socket.h"
#include "tests/integration/harness.h"

extern char** environ;

namespace vsockd::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string SelfExe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  return std::string(buf, static_cast<size_t>(n));
}

Result<Child> SpawnRole(const std::string& role, const std::string& path, uint32_t port,
                        uint64_t total, size_t write_size) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) < 0) return ErrnoError("pipe");
  Fd rd(pipefd[0]), wr(pipefd[1]);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, wr.get(), STDOUT_FILENO);
  std::string exe = SelfExe();
  std::vector<std::string> args = {exe,
                                   "--role",
                                   role,
                                   "--path",
                                   path,
                                   "--port",
                                   std::to_string(port),
                                   "--bytes",
                                   std::to_string(total),
                                   "--write-size",
                                   std::to_string(write_size)};
  // Only under --placement split (vsockd_scale_bench's roles take no --cpu).
  if (HostSideCpu() >= 0) {
    args.push_back("--cpu");
    args.push_back(std::to_string(HostSideCpu()));
  }
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return MakeError(rc, "posix_spawn {}", exe);
  return Child{pid, std::move(rd)};
}

Result<std::string> ReadAllAndWait(Child& child) {
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = ::read(child.out.get(), buf, sizeof buf)) > 0) out.append(buf, n);
  int status = 0;
  ::waitpid(child.pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return MakeError(EIO, "benchmark role failed (status {}): {}", status, out);
  }
  return out;
}

}  // namespace

namespace {
int host_side_cpu = -1;
}  // namespace

Status PinToCpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) return ErrnoError("sched_setaffinity");
  return OkStatus();
}

Status ApplyPlacement(Placement p) {
  if (p == Placement::kScheduler) return OkStatus();
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return ErrnoError("sched_getaffinity");
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE && cpus.size() < 2; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  if (cpus.empty() || (p == Placement::kSplit && cpus.size() < 2)) {
    return MakeError(EINVAL, "--placement {} needs {} CPUs, this process may use {}",
                     PlacementName(p), p == Placement::kSplit ? 2 : 1, CPU_COUNT(&set));
  }
  if (p == Placement::kSplit) host_side_cpu = cpus[0];
  return PinToCpu(p == Placement::kSplit ? cpus[1] : cpus[0]);
}

int HostSideCpu() { return host_side_cpu; }

std::vector<std::string> HostSideArgv(std::vector<std::string> argv) {
  if (host_side_cpu < 0) return argv;
  // Callers exec without a PATH search; env finds util-linux's taskset.
  argv.insert(argv.begin(), {"/usr/bin/env", "taskset", "-c", std::to_string(host_side_cpu)});
  return argv;
}

namespace {
struct PlacementInfo {
  Placement placement;
  const char* name;
  const char* note;
};
constexpr PlacementInfo kPlacements[] = {
    {Placement::kScheduler, "scheduler", "the kernel places every process"},
    {Placement::kSplit, "split",
     "host side on one CPU; virtual guest, vsockd and the raw writer/reader it is compared "
     "with on another"},
    {Placement::kOneCpu, "one-cpu", "everything on one CPU: CPU cost per byte"},
};
const PlacementInfo& Info(Placement p) {
  for (const PlacementInfo& i : kPlacements) {
    if (i.placement == p) return i;
  }
  return kPlacements[0];
}
}  // namespace

const char* PlacementName(Placement p) { return Info(p).name; }
const char* PlacementNote(Placement p) { return Info(p).note; }
std::map<std::string, Placement> PlacementsByName() {
  std::map<std::string, Placement> m;
  for (const PlacementInfo& i : kPlacements) m.emplace(i.name, i.placement);
  return m;
}

bool WaitForListener(const std::string& path, std::chrono::milliseconds timeout) {
  return testing::WaitFor([&] { return testing::UnixListening(path); }, timeout);
}

Result<Child> SpawnRoleChild(const std::string& role, const std::string& path, uint32_t port,
                             uint64_t total, size_t write_size) {
  return SpawnRole(role, path, port, total, write_size);
}

Result<std::string> FinishRole(Child& child) { return ReadAllAndWait(child); }

void StopRole(Child& child) {
  if (child.pid <= 0) return;
  ::kill(child.pid, SIGTERM);
  int status;
  ::waitpid(child.pid, &status, 0);
  child.pid = -1;
}

namespace {
// Seconds on `clock`; -1 if it cannot be read (a process clock of a process that is gone).
double ClockSeconds(clockid_t clock) {
  timespec ts{};
  if (::clock_gettime(clock, &ts) != 0) return -1;
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}
}  // namespace

double ThreadCpuSeconds() { return ClockSeconds(CLOCK_THREAD_CPUTIME_ID); }
double ProcessCpuSeconds() { return ClockSeconds(CLOCK_PROCESS_CPUTIME_ID); }
Result<double> ProcessCpuSeconds(pid_t pid) {
  clockid_t clock;
  if (int e = ::clock_getcpuclockid(pid, &clock); e != 0) {
    return MakeError(e, "CPU clock of process {}", pid);
  }
  double s = ClockSeconds(clock);
  if (s < 0) return ErrnoError("CPU clock of process {}", pid);
  return s;
}

bool ParseSinkReport(const std::string& report, ThroughputResult* r) {
  return std::sscanf(report.c_str(), "%lu %lf %lf", &r->bytes, &r->seconds, &r->cpu.reader) == 3;
}

Result<ThroughputResult> SinkUntilEof(int fd) {
  std::vector<uint8_t> buf(256 * 1024);
  ThroughputResult r;
  Clock::time_point first{};
  while (true) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("sink read");
    if (n == 0) break;
    if (r.bytes == 0) first = Clock::now();
    r.bytes += static_cast<uint64_t>(n);
  }
  r.seconds = r.bytes > 0 ? Seconds(Clock::now() - first) : 0;
  return r;
}

Status SourceBytes(int fd, uint64_t total, size_t write_size) {
  std::vector<uint8_t> buf(write_size, 0x5a);
  uint64_t sent = 0;
  while (sent < total) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(write_size, total - sent));
    ssize_t n = ::send(fd, buf.data(), want, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("source write");
    sent += static_cast<uint64_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  return OkStatus();
}

Status EchoUntilEof(int fd) {
  std::vector<uint8_t> buf(64 * 1024);
  while (true) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("echo read");
    if (n == 0) return OkStatus();
    VSOCKD_RETURN_IF_ERROR(WriteAll(fd, buf.data(), static_cast<size_t>(n)));
  }
}

LatencyResult Percentiles(std::vector<double> s) {
  LatencyResult r;
  if (s.empty()) return r;
  std::sort(s.begin(), s.end());
  r.p50_us = s[s.size() / 2];
  r.p99_us = s[std::min(s.size() - 1, s.size() * 99 / 100)];
  r.max_us = s.back();
  return r;
}

Result<LatencyResult> PingPong(int fd, size_t size, int count) {
  std::vector<uint8_t> msg(size, 0x42), in(size);
  std::vector<double> samples;
  samples.reserve(count);
  for (int i = 0; i < count; ++i) {
    auto t0 = Clock::now();
    VSOCKD_RETURN_IF_ERROR(WriteAll(fd, msg.data(), size));
    VSOCKD_RETURN_IF_ERROR(ReadExact(fd, in.data(), size));
    samples.push_back(Seconds(Clock::now() - t0) * 1e6);
  }
  return Percentiles(std::move(samples));
}

Result<ThroughputResult> RawUnixThroughput(uint64_t total, size_t write_size, int type) {
  char dir[] = "/tmp/vsockd-bench-XXXXXX";
  if (::mkdtemp(dir) == nullptr) return ErrnoError("mkdtemp");
  std::string path = std::string(dir) + "/raw.sock";
  auto listener = ListenUnix(path, 16, /*nonblocking=*/false, type);
  if (!listener.ok()) return listener.take_error();
  auto child = SpawnRole(type == SOCK_SEQPACKET ? "raw-sink-seqpacket" : "raw-sink", path, 0, total,
                         write_size);
  if (!child.ok()) return child.take_error();
  Fd conn(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!conn) return ErrnoError("accept");
  // The child connected to us and sinks; we are the source, like the guest app.
  const double cpu0 = ThreadCpuSeconds();
  VSOCKD_RETURN_IF_ERROR(SourceBytes(conn.get(), total, write_size));
  const double writer_cpu = ThreadCpuSeconds() - cpu0;
  conn.Reset();
  auto out = ReadAllAndWait(*child);
  ::unlink(path.c_str());
  ::rmdir(dir);
  if (!out.ok()) return out.take_error();
  ThroughputResult r;
  if (!ParseSinkReport(*out, &r)) {
    return MakeError(EIO, "bad sink output '{}'", *out);
  }
  r.cpu.writer = writer_cpu;
  return r;
}

Result<LatencyResult> RawUnixRoundTrip(size_t size, int count) {
  char dir[] = "/tmp/vsockd-bench-XXXXXX";
  if (::mkdtemp(dir) == nullptr) return ErrnoError("mkdtemp");
  std::string path = std::string(dir) + "/raw.sock";
  auto listener = ListenUnix(path, 16, false);
  if (!listener.ok()) return listener.take_error();
  auto child = SpawnRole("raw-echo", path, 0, 0, 0);
  if (!child.ok()) return child.take_error();
  Fd conn(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!conn) return ErrnoError("accept");
  auto r = PingPong(conn.get(), size, count);
  conn.Reset();
  auto out = ReadAllAndWait(*child);
  ::unlink(path.c_str());
  ::rmdir(dir);
  if (!out.ok()) return out.take_error();
  return r;
}

Result<double> RawUnixConnectRate(double seconds) {
  char dir[] = "/tmp/vsockd-bench-XXXXXX";
  if (::mkdtemp(dir) == nullptr) return ErrnoError("mkdtemp");
  std::string path = std::string(dir) + "/raw.sock";
  auto child = SpawnRole("acceptor", path, 0, 0, 0);
  if (!child.ok()) return child.take_error();
  // Wait for the child's listen(): its socket file appears at bind(), a moment earlier, and a
  // connect in between is refused (seen with --placement one-cpu).
  if (!WaitForListener(path)) {
    StopRole(*child);
    return MakeError(ETIMEDOUT, "raw acceptor did not start");
  }
  uint64_t count = 0;
  auto start = Clock::now();
  auto deadline = start + std::chrono::duration<double>(seconds);
  while (Clock::now() < deadline) {
    auto fd = ConnectUnix(path);
    if (!fd.ok()) return fd.take_error();
    char c;
    VSOCKD_RETURN_IF_ERROR(ReadExact(fd->get(), &c, 1));
    ++count;
  }
  double rate = count / Seconds(Clock::now() - start);
  StopRole(*child);
  ::unlink(path.c_str());
  ::rmdir(dir);
  return rate;
}

std::string HostServicePath(const std::string& uds_path, uint32_t port, bool seqpacket) {
  return uds_path + "_" + std::to_string(port) + (seqpacket ? ".seqpacket" : "");
}

int RunRole(const std::string& role_arg, const std::string& path, uint32_t port, uint64_t total,
            size_t write_size) {
  auto fail = [&](const Error& e) {
    std::fprintf(stderr, "role %s: %s\n", role_arg.c_str(), e.ToString().c_str());
    return 1;
  };
  // "<role>-seqpacket": the same role on SOCK_SEQPACKET sockets, each write one message; on
  // vsockd's side that is its ".seqpacket" files (<uds-path>_<port>.seqpacket, and
  // <uds-path>.seqpacket for host -> guest connects).
  constexpr std::string_view kSeqSuffix = "-seqpacket";
  std::string role = role_arg;
  int type = SOCK_STREAM;
  if (role.size() > kSeqSuffix.size() && role.ends_with(kSeqSuffix)) {
    role.resize(role.size() - kSeqSuffix.size());
    type = SOCK_SEQPACKET;
  }
  std::string target = port != 0 ? HostServicePath(path, port, type == SOCK_SEQPACKET) : path;
  // Sinks `fd` to EOF and reports "bytes seconds cpu_seconds" (this process's CPU for it).
  auto sink = [&](int fd) {
    const double cpu0 = ProcessCpuSeconds();
    auto r = SinkUntilEof(fd);
    if (!r.ok()) return fail(r.error());
    std::printf("%lu %.9f %.9f\n", r->bytes, r->seconds, ProcessCpuSeconds() - cpu0);
    return 0;
  };
  if (role == "raw-sink" || role == "raw-echo") {
    auto fd = ConnectUnix(target, /*nonblocking=*/false, type);
    if (!fd.ok()) return fail(fd.error());
    if (role == "raw-echo") {
      auto s = EchoUntilEof(fd->get());
      return s.ok() ? 0 : fail(s.error());
    }
    return sink(fd->get());
  }
  if (role == "host-sink" || role == "host-echo" || role == "acceptor") {
    // Serves `target` (vsockd's <uds-path>_<port>, or a raw path): sink/echo one connection,
    // or accept connections answering one byte each until a client sends 'q'.
    auto listener = ListenUnix(target, 1024, false, type);
    if (!listener.ok()) return fail(listener.error());
    if (role == "acceptor") {
      // Accept, answer one byte, close; until the parent stops us with SIGTERM.
      while (true) {
        Fd c(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!c) return fail(ErrnoError("accept"));
        (void)::send(c.get(), "a", 1, MSG_NOSIGNAL);
      }
    }
    Fd c(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) return fail(ErrnoError("accept"));
    if (role == "host-echo") {
      auto s = EchoUntilEof(c.get());
      return s.ok() ? 0 : fail(s.error());
    }
    return sink(c.get());
  }
  if (role == "host-source") {
    // Connects to a guest port through vsockd's hybrid socket and sends `total` bytes.
    auto fd = testing::HybridConnect(path, port, nullptr, type);
    if (!fd.ok()) return fail(fd.error());
    const double cpu0 = ProcessCpuSeconds();
    auto s = SourceBytes(fd->get(), total, write_size);
    if (!s.ok()) return fail(s.error());
    // Wait for the guest to close so the sink's timing includes everything.
    char c;
    while (::read(fd->get(), &c, 1) > 0) {
    }
    std::printf("done %.9f\n", ProcessCpuSeconds() - cpu0);
    return 0;
  }
  std::fprintf(stderr, "unknown role '%s'\n", role.c_str());
  return 2;
}

}  // namespace vsockd::bench
