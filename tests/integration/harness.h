// Integration-test harness: runs the real vsockd binary as a child process and drives it
// with vguest (in-process, on its own event-loop thread) and real AF_UNIX peers.
//
// Callers: the integration tests in this folder and the benchmark drivers. Threading: each
// GuestRunner owns a thread running an EventLoop; Call() runs a function there and waits.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"
// PatternBytes, Fnv1a (the data pattern and checksum shared with the guest programs).
#include "tests/common/pattern.h"

namespace vsockd::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A child process with stderr (and stdout) captured to a file.
class Subprocess {
 public:
  Subprocess() = default;
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  Status Start(const std::vector<std::string>& argv, const std::string& log_path);
  // Sends `sig` and waits up to `timeout` for the exit; returns the wait status (-1 if it had
  // to be killed with SIGKILL).
  int Stop(int sig = SIGTERM, std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Waits up to `timeout` for the child to exit by itself (a program run to completion);
  // returns the wait status, or -1 if it had to be killed with SIGKILL (and reaped) or was
  // not running.
  int Wait(std::chrono::milliseconds timeout);
  bool Running();
  pid_t pid() const { return pid_; }
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  std::string log_path_;
};

// The vsockd daemon under test, on sockets in `dir`.
class Daemon {
 public:
  explicit Daemon(const TempDir& dir, uint64_t cid = 3, std::vector<std::string> extra = {});
  ~Daemon();
  Status Start();
  int Stop() { return proc_.Stop(); }
  const std::string& socket_path() const { return socket_; }
  const std::string& uds_path() const { return uds_; }
  std::string Log() const { return proc_.Log(); }
  bool Running() { return proc_.Running(); }
  // Resident set size of the daemon, in KiB (from /proc/PID/status).
  long RssKb() const;
  pid_t pid() const { return proc_.pid(); }

 private:
  std::string socket_, uds_, log_;
  uint64_t cid_;
  std::vector<std::string> extra_;
  Subprocess proc_;
};

// The first child process of `pid` (/proc/PID/task/PID/children), or -1: the worker of a
// `vsockd --keep-sessions` keeper.
pid_t FirstChildOf(pid_t pid);

// Path of a binary built next to the tests (VSOCKD_BINARY_DIR is set by CMake).
std::string BuiltBinary(const std::string& name);

// A whole file ("" if it cannot be read), and whether a path exists (lstat: a dangling link
// or a socket counts).
std::string ReadFile(const std::string& path);
bool PathExists(const std::string& path);
// True once a socket at `path` is listening (/proc/net/unix: __SO_ACCEPTCON). A server's file
// appears at bind(), a moment before its listen(): wait for this, not for the file, before a
// client that does not retry (QEMU, a one-shot connect) connects.
bool UnixListening(const std::string& path);

// Runs an EventLoop on its own thread.
class LoopThread {
 public:
  LoopThread();
  ~LoopThread();
  EventLoop* loop() { return loop_.get(); }
  // Runs fn on the loop thread and waits for it.
  template <typename F>
  auto Call(F&& fn) -> decltype(fn()) {
    using R = decltype(fn());
    std::packaged_task<R()> task(std::forward<F>(fn));
    auto future = task.get_future();
    loop_->Post([&task] { task(); });
    return future.get();
  }

 private:
  std::unique_ptr<EventLoop> loop_;
  std::thread thread_;
};

// Waits until pred() is true, polling; false on timeout.
bool WaitFor(const std::function<bool()>& pred,
             std::chrono::milliseconds timeout = std::chrono::seconds(10));

// Host side of the hybrid convention: connect to `uds_path`, send "CONNECT <port>\n", read
// the reply line. On "OK ..." returns the connected stream; else an error carrying the line.
// `type` SOCK_SEQPACKET: vsockd's `<uds_path>.seqpacket`, the command and the reply one
// message each (*reply without its '\n').
Result<Fd> HybridConnect(const std::string& uds_path, uint32_t port, std::string* reply = nullptr,
                         int type = SOCK_STREAM);

// Runs a shell command line (under `timeout 60`) and collects its stdout + stderr.
struct RunResult {
  int exit_code = -1;  // -1 if it did not exit normally
  std::string output;
};
RunResult RunCommand(const std::string& cmd);

// Reads a line (up to '\n', excluded) byte by byte from a blocking fd.
Result<std::string> ReadLine(int fd, size_t max = 256);

// Reads a blocking fd until EOF, an error or the socket's receive timeout; `*err` (if given)
// gets the errno of a failed read, 0 on EOF.
std::string ReadToEof(int fd, int* err = nullptr);

// Sets a socket's SO_RCVTIMEO and SO_SNDTIMEO, so a blocking test read/write cannot hang.
void SetSocketTimeouts(int fd, std::chrono::seconds timeout);

// ---- Unmodified AF_VSOCK host programs (the LD_PRELOAD shim) ----
// HARD RULE: a host program that could create an AF_VSOCK socket only ever runs under
// no_vsock_guard (seccomp: socket(AF_VSOCK) -> EACCES), so a shim that failed to load fails
// the test instead of touching the build machine's vsock.
std::string GuardBinary();  // tests/guard/no_vsock_guard
std::string ShimLibrary();  // src/preload/libvsock_preload.so
// argv prefix running a program under the guard with the shim preloaded and VSOCKD_RUN_DIR
// set (`env`, found on PATH by the guard's execvp, sets the environment, so the guard itself
// is not preloaded). Python output unbuffered, no .pyc written.
std::vector<std::string> Shimmed(const std::string& run_dir);
// Our own tools (vsockcat, vsockperf, guestcheck) also speak vsock:// and run under the
// guard too: `argv` prefixed with the guard, and the same as a shell command prefix
// ("<guard> <built binary>").
std::vector<std::string> Guarded(std::vector<std::string> argv);
std::string GuardedCommand(const std::string& built_binary);
// A seed program's path (tests/seed/NAME). Needs VSOCKD_SOURCE_DIR (set for the harness).
std::string SeedProgram(const std::string& name);
// A file of the source tree ("scripts/promtool.sh"). Needs VSOCKD_SOURCE_DIR too.
std::string SourceFile(const std::string& relative);
// Quotes argv for /bin/sh (single quotes, ' as '\'').
std::string ShellLine(const std::vector<std::string>& argv);

}  // namespace vsockd::testing
