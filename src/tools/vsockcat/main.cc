// vsockcat: the socat/ncat of vsock. Connects to or listens on vsock, vsockd hybrid, Unix and
// TCP addresses and relays the connection to stdin/stdout, to a command (--exec), or to
// another address (--forward: many concurrent connections).
//
//   vsockcat [options] ADDRESS            connect, relay stdin/stdout
//   vsockcat -l [options] ADDRESS         listen, accept one connection (-k: many)
//   vsockcat -l -e CMD ADDRESS            run CMD per connection, connection = its stdin/stdout
//   vsockcat --forward FROM TO            listen on FROM, relay each connection to TO
//
// Exit status: 0 success, 1 connection or I/O errors, 2 usage errors.
// Threading: one EventLoop thread; --exec children are separate processes.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/run_main.h"
#include "host/caller_name.h"
#include "tools/vsockcat/endpoint.h"
#include "tools/vsockcat/relay.h"

#ifndef VSOCKCAT_VERSION
#define VSOCKCAT_VERSION "0.1.0"
#endif

namespace vsockd::vsockcat {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

EventLoop* g_loop = nullptr;
std::optional<rlimit> g_nofile;  // the RLIMIT_NOFILE we started with, if we raised it
void OnStopSignal(int) {
  if (g_loop != nullptr) g_loop->Stop();
}

struct Options {
  bool listen = false;
  bool keep_open = false;
  bool fork = false;
  bool forward = false;
  std::string exec;
  double wait_seconds = 10;
  bool quiet = false;
  bool verbose = false;
  unsigned max_connections = 256;
  size_t buffer_size = Relay::kDefaultBufferSize;
  bool no_splice = false;
  bool seqpacket = false;  // vsock/hvsock endpoints are SOCK_SEQPACKET
  std::vector<std::string> addresses;
};

template <typename... Args>
void Say(fmt::format_string<Args...> f, Args&&... args) {
  std::string line = "vsockcat: " + fmt::format(f, std::forward<Args>(args)...) + "\n";
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

// Who is on the other end of an accepted socket, for -v.
std::string PeerName(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  char buf[128] = "";
  if (ss.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
    return fmt::format("tcp:{}:{}", buf, ntohs(in->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
    return fmt::format("tcp:[{}]:{}", buf, ntohs(in6->sin6_port));
  }
  if (ss.ss_family == AF_UNIX) {
    // vsockd names its guest -> host sockets after the calling guest (host/caller_name.h).
    host::CallerName caller;
    if (host::ParseCallerAddress(reinterpret_cast<sockaddr_un*>(&ss), len, &caller)) {
      return fmt::format("guest vsock://{}:{}", caller.guest_cid, caller.guest_port);
    }
    std::error_code ec;
    auto a = vsock::Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len, ec);
    if (a) return a->to_string();
    return "an unnamed unix socket (a guest, through vsockd)";
  }
  if (ss.ss_family == AF_VSOCK) {  // in a guest: the kernel names the peer
    std::error_code ec;
    auto a = vsock::Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len, ec);
    if (a) return a->to_string();
  }
  return "?";
}

void TuneSocket(int fd) {
  int one = 1;
  // Fails harmlessly on non-TCP sockets.
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

class App {
 public:
  App(Options opt, EventLoop* loop) : opt_(std::move(opt)), loop_(loop) {}
  ~App() { RestoreStdio(); }

  int Run() {
    if (Status st = SetupSignals(); !st.ok()) {
      Say("{}", st.error().ToString());
      return kExitError;
    }
    if (opt_.forward) {
      if (!StartListening(from_)) return kExitError;
    } else if (opt_.listen) {
      if (!StartListening(target_)) return kExitError;
    } else {
      StartConnect();
    }
    loop_->Run();
    // Stopped by a signal or by us: children of --exec keep running on their own.
    return exit_code_;
  }

  bool Configure() {
    auto usage = [](const std::string& msg) {
      Say("{}", msg);
      return false;
    };
    // socat's two-address form with stdio on one side: `vsockcat - ADDRESS`.
    if (opt_.addresses.size() == 2 && !opt_.forward) {
      auto is_stdio = [](const std::string& a) { return a == "-" || a == "stdio"; };
      if (is_stdio(opt_.addresses[0])) {
        opt_.addresses.erase(opt_.addresses.begin());
      } else if (is_stdio(opt_.addresses[1])) {
        opt_.addresses.pop_back();
      }
    }
    const size_t n = opt_.addresses.size();
    if (opt_.forward && n != 2) return usage("--forward needs two addresses: FROM TO");
    if (n == 2) opt_.forward = true;
    if (n == 0) return usage("an address is needed (try --help)");
    if (n > 2) return usage("too many addresses (try --help)");
    if (opt_.forward) {
      if (!opt_.exec.empty()) return usage("--exec and --forward do not go together");
      auto from = ParseEndpoint(opt_.addresses[0], true);
      if (!from.ok()) return usage(from.error().context);
      auto to = ParseEndpoint(opt_.addresses[1], false);
      if (!to.ok()) return usage(to.error().context);
      if (to->role == Endpoint::Role::kListen) {
        return usage(
            fmt::format("--forward TO '{}' must be an address to connect to", opt_.addresses[1]));
      }
      from_ = std::move(*from);
      to_ = std::move(*to);
      ApplySeqpacket();
      return true;
    }
    auto probe = ParseEndpoint(opt_.addresses[0], opt_.listen);
    if (!probe.ok()) return usage(probe.error().context);
    if (probe->role == Endpoint::Role::kListen) opt_.listen = true;  // socat's TCP-LISTEN:...
    if (opt_.listen && probe->role == Endpoint::Role::kAny) {
      probe = ParseEndpoint(opt_.addresses[0], true);
      if (!probe.ok()) return usage(probe.error().context);
    }
    if ((opt_.keep_open || opt_.fork) && !opt_.listen) {
      return usage("--keep-open/--fork need -l (listen)");
    }
    target_ = std::move(*probe);
    ApplySeqpacket();
    return true;
  }

  // --seqpacket: vsock and hvsock endpoints become SOCK_SEQPACKET (unix: ones stay streams;
  // unix-seqpacket: says so itself). Each read is relayed as one message, so the relay
  // buffer is also the largest message: at most 128 KiB, which fits both an AF_UNIX
  // SEQPACKET socket's default send buffer and vsock's default buf_alloc (256 KiB).
  void ApplySeqpacket() {
    for (Endpoint* ep : {&target_, &from_, &to_}) {
      if (opt_.seqpacket && !ep->is_tcp() && !ep->address.is_unix()) ep->seqpacket = true;
      if (ep->seqpacket) seqpacket_ = true;
    }
    if (seqpacket_) opt_.buffer_size = std::min<size_t>(opt_.buffer_size, 128 * 1024);
  }

 private:
  struct Forwarded {
    Fd in, out;
    std::string peer;
    std::unique_ptr<Dialer> dialer;
    std::unique_ptr<Relay> relay;
  };

  Status SetupSignals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &set, &saved_mask_) != 0) return ErrnoError("sigprocmask");
    sigchld_.Reset(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!sigchld_) return ErrnoError("signalfd");
    return loop_->Add(sigchld_.get(), EPOLLIN, [this](uint32_t) { ReapChildren(); });
  }

  // ---- listening ----------------------------------------------------------------------

  bool StartListening(const Endpoint& ep) {
    auto ls = Listen(ep);
    if (!ls.ok()) {
      Say("{}", ls.error().ToString());
      exit_code_ = kExitError;
      return false;
    }
    listener_ = std::move(*ls);
    if (opt_.verbose) Say("listening on {}", listener_.Describe());
    ResumeAccepting();
    return true;
  }

  void ResumeAccepting() {
    if (accepting_ || listener_.fd() < 0) return;
    if (loop_->Add(listener_.fd(), EPOLLIN, [this](uint32_t) { OnAcceptable(); }).ok()) {
      accepting_ = true;
    }
  }
  void PauseAccepting() {
    if (!accepting_) return;
    loop_->Remove(listener_.fd());
    accepting_ = false;
  }
  void CloseListener() {
    PauseAccepting();
    listener_ = ListenSocket{};
  }

  size_t Active() const { return forwarded_.size() + children_ + (stdio_relay_ ? 1 : 0); }

  bool CanTakeMore() const {
    if (!opt_.exec.empty() || opt_.forward) return Active() < opt_.max_connections;
    return !stdio_relay_;  // stdio: one connection at a time
  }

  void OnAcceptable() {
    while (accepting_ && CanTakeMore()) {
      auto fd = Accept(listener_.fd());
      if (!fd.ok()) {
        if (fd.error().code == EAGAIN || fd.error().code == EWOULDBLOCK) return;
        if (!opt_.quiet) Say("{}", fd.error().ToString());
        if (fd.error().code == EMFILE || fd.error().code == ENFILE) {
          PauseAccepting();  // resumed when a connection ends
        }
        return;
      }
      TuneSocket(fd->get());
      std::string peer = PeerName(fd->get());
      if (opt_.verbose) Say("connection from {}", peer);
      const bool last = !opt_.keep_open && !opt_.fork && !opt_.forward;
      if (last) CloseListener();
      if (opt_.forward) {
        StartForward(std::move(*fd), std::move(peer));
      } else if (!opt_.exec.empty()) {
        SpawnExec(std::move(*fd), /*wait_for_it=*/last);
      } else {
        StartStdioRelay(std::move(*fd), peer, /*last=*/last);
      }
    }
    if (accepting_ && !CanTakeMore()) PauseAccepting();
  }

  void ConnectionEnded() {
    if (listener_.fd() >= 0 && CanTakeMore()) ResumeAccepting();
  }

  // ---- connect mode -------------------------------------------------------------------

  void StartConnect() {
    dialer_ = std::make_unique<Dialer>(loop_, target_, WaitTimeout(), [this](Result<Fd> r) {
      auto alive = std::move(dialer_);  // destroyed at the end of this callback
      loop_->Defer([d = std::shared_ptr<Dialer>(std::move(alive))] {});
      if (!r.ok()) {
        Say("{}", r.error().context);
        exit_code_ = kExitError;
        loop_->Stop();
        return;
      }
      if (opt_.verbose) Say("connected to {}", target_.ToString());
      TuneSocket(r->get());
      if (!opt_.exec.empty()) {
        SpawnExec(std::move(*r), /*wait_for_it=*/true);
      } else {
        StartStdioRelay(std::move(*r), target_.ToString(), /*last=*/true);
      }
    });
    dialer_->Start();
  }

  std::chrono::milliseconds WaitTimeout() const {
    return std::chrono::milliseconds(static_cast<int64_t>(opt_.wait_seconds * 1000));
  }

  // ---- stdin/stdout relay -------------------------------------------------------------

  void StartStdioRelay(Fd conn, const std::string& peer, bool last) {
    SaveStdio();
    stdio_conn_ = std::move(conn);
    RelaySide stdio{STDIN_FILENO, STDOUT_FILENO, "stdin/stdout", stdin_eof_};
    RelaySide net{stdio_conn_.get(), stdio_conn_.get(), peer, false};
    stdio_relay_ = std::make_unique<Relay>(
        loop_, stdio, net,
        [this, last, peer](const RelayStats& stats, const Status& st) {
          stdin_eof_ = stdin_eof_ || stats.a_input_eof;
          if (opt_.verbose) {
            Say("{} closed: {} bytes sent, {} received", peer, stats.a_to_b, stats.b_to_a);
          }
          if (!st.ok()) {
            Say("{}: {}", peer, st.error().ToString());
            if (last) exit_code_ = kExitError;
          }
          stdio_relay_.reset();
          stdio_conn_.Reset();
          if (last) {
            loop_->Stop();
          } else {
            ConnectionEnded();
          }
        },
        opt_.buffer_size);
    stdio_relay_->Start();
  }

  void SaveStdio() {
    if (stdio_saved_) return;
    stdio_saved_ = true;
    stdin_flags_ = ::fcntl(STDIN_FILENO, F_GETFL);
    stdout_flags_ = ::fcntl(STDOUT_FILENO, F_GETFL);
  }
  // stdin/stdout may be a terminal shared with the shell: give back its blocking mode.
  void RestoreStdio() {
    if (!stdio_saved_) return;
    if (stdin_flags_ >= 0) ::fcntl(STDIN_FILENO, F_SETFL, stdin_flags_);
    if (stdout_flags_ >= 0) ::fcntl(STDOUT_FILENO, F_SETFL, stdout_flags_);
  }

  // ---- --exec -------------------------------------------------------------------------

  void SpawnExec(Fd conn, bool wait_for_it) {
    (void)SetNonBlocking(conn.get(), false);
    pid_t pid = ::fork();
    if (pid < 0) {
      Say("fork: {}", std::strerror(errno));
      if (wait_for_it) {
        exit_code_ = kExitError;
        loop_->Stop();
      }
      return;
    }
    if (pid == 0) {
      // Child: the connection becomes stdin and stdout; default signal handling.
      ::sigprocmask(SIG_SETMASK, &saved_mask_, nullptr);
      ::signal(SIGPIPE, SIG_DFL);
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      if (g_nofile) (void)::setrlimit(RLIMIT_NOFILE, &*g_nofile);
      if (::dup2(conn.get(), STDIN_FILENO) < 0 || ::dup2(conn.get(), STDOUT_FILENO) < 0) {
        ::_exit(126);
      }
      ::execl("/bin/sh", "sh", "-c", opt_.exec.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ++children_;
    if (wait_for_it) waited_child_ = pid;
    if (opt_.verbose) Say("started '{}' (pid {})", opt_.exec, pid);
  }

  void ReapChildren() {
    signalfd_siginfo info;
    while (::read(sigchld_.get(), &info, sizeof info) > 0) {
    }
    while (true) {
      int status = 0;
      pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      if (children_ > 0) --children_;
      if (opt_.verbose) {
        Say("'{}' (pid {}) exited with status {}", opt_.exec, pid,
            WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
      }
      if (pid == waited_child_) {
        loop_->Stop();
        return;
      }
    }
    ConnectionEnded();
  }

  // ---- --forward ----------------------------------------------------------------------

  void StartForward(Fd in, std::string peer) {
    auto it = forwarded_.emplace(forwarded_.end());
    Forwarded& f = *it;
    f.in = std::move(in);
    f.peer = std::move(peer);
    f.dialer = std::make_unique<Dialer>(loop_, to_, WaitTimeout(), [this, it](Result<Fd> r) {
      Forwarded& f = *it;
      loop_->Defer([d = std::shared_ptr<Dialer>(std::move(f.dialer))] {});
      if (!r.ok()) {
        if (!opt_.quiet) Say("{} -> {}", f.peer, r.error().context);
        return EndForward(it);
      }
      TuneSocket(r->get());
      f.out = std::move(*r);
      if (opt_.verbose) Say("{} -> {}: connected", f.peer, to_.ToString());
      f.relay = std::make_unique<Relay>(
          loop_, RelaySide{f.in.get(), f.in.get(), f.peer, false},
          RelaySide{f.out.get(), f.out.get(), to_.ToString(), false},
          [this, it](const RelayStats& stats, const Status& st) {
            Forwarded& f = *it;
            if (!st.ok() && !opt_.quiet)
              Say("{} -> {}: {}", f.peer, to_.ToString(), st.error().ToString());
            if (opt_.verbose) {
              Say("{} -> {}: closed ({} bytes forwarded, {} returned)", f.peer, to_.ToString(),
                  stats.a_to_b, stats.b_to_a);
            }
            EndForward(it);
          },
          opt_.buffer_size);
      // splice(2) moves bytes, not messages.
      f.relay->set_use_splice(!opt_.no_splice && !seqpacket_);
      f.relay->Start();
    });
    f.dialer->Start();
  }

  void EndForward(std::list<Forwarded>::iterator it) {
    // Called from the relay's or dialer's own callback: free it after this batch.
    auto holder = std::make_shared<Forwarded>(std::move(*it));
    forwarded_.erase(it);
    loop_->Defer([holder] {});
    ConnectionEnded();
  }

  Options opt_;
  bool seqpacket_ = false;  // some endpoint is SOCK_SEQPACKET
  EventLoop* loop_;
  Endpoint target_, from_, to_;
  int exit_code_ = kExitOk;
  ListenSocket listener_;
  bool accepting_ = false;
  std::unique_ptr<Dialer> dialer_;
  Fd stdio_conn_;
  std::unique_ptr<Relay> stdio_relay_;
  bool stdin_eof_ = false;
  bool stdio_saved_ = false;
  int stdin_flags_ = -1, stdout_flags_ = -1;
  Fd sigchld_;
  sigset_t saved_mask_{};
  unsigned children_ = 0;
  pid_t waited_child_ = -1;
  std::list<Forwarded> forwarded_;
};

int Main(int argc, char** argv) {
  Options opt;
  CLI::App cli{
      "vsockcat: connect, listen and forward vsock, vsockd hybrid (hvsock://), Unix and TCP "
      "streams, like socat/ncat.\n\n"
      "  vsockcat [options] ADDRESS          connect; relay stdin/stdout\n"
      "  vsockcat -l [options] ADDRESS       listen; relay one connection to stdin/stdout\n"
      "  vsockcat -l -k -e CMD ADDRESS       run CMD for each connection (its stdin/stdout)\n"
      "  vsockcat [--forward] FROM TO        listen on FROM; relay every connection to TO\n\n"
      "Examples:\n"
      "  vsockcat hvsock:///run/vsockd/vm3.vsock:5000      talk to guest port 5000\n"
      "  vsockcat -l hvsock:///run/vsockd/vm3.vsock:9999   what guests send to host port 9999\n"
      "  vsockcat --forward tcp-listen:8080 vsock://3:80   host TCP 8080 -> guest port 80\n"
      "  vsockcat --forward vsock-listen:1234 tcp:10.0.0.1:80   in a guest: vsock -> TCP\n\n" +
          std::string(kAddressHelp) +
          "\nHalf-close is kept: EOF on one side shuts down the other side's write half and "
          "the other direction goes on.\nExit status: 0 success, 1 connection or I/O "
          "error, 2 usage error.",
      "vsockcat"};
  cli.add_flag("-l,--listen", opt.listen, "Listen on ADDRESS and accept a connection");
  cli.add_flag("-k,--keep-open", opt.keep_open,
               "With -l: accept more connections (stdio: one at a time; --exec: concurrently)");
  cli.add_flag("--fork", opt.fork, "Like -k (socat's fork option)");
  cli.add_option("-e,--exec,--sh-exec", opt.exec,
                 "Run CMD (with /bin/sh -c) per connection, with the connection as its "
                 "stdin and stdout")
      ->type_name("CMD");
  cli.add_flag("--forward", opt.forward,
               "Forward: listen on FROM, connect every accepted connection to TO");
  cli.add_option("-w,--wait,--connect-timeout", opt.wait_seconds,
                 "Connect timeout in seconds (0: none)")
      ->type_name("SECONDS")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cli.add_option("--max-connections", opt.max_connections,
                 "Most connections (or --exec children) at once; more wait in the backlog")
      ->type_name("N")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  cli.add_option("--buffer-size", opt.buffer_size, "Relay buffer per direction, in bytes")
      ->type_name("BYTES")
      ->check(CLI::Range(size_t{4096}, size_t{64} << 20))
      ->capture_default_str();
  cli.add_flag("--no-splice", opt.no_splice,
               "Socket to socket: copy with read/write instead of splice(2)");
  cli.add_flag("--seqpacket", opt.seqpacket,
               "vsock and hvsock endpoints use SOCK_SEQPACKET (socat's socktype=5): each "
               "read (a line from a terminal, a message from a socket) is sent as one message; "
               "messages up to --buffer-size (at most 128 KiB)");
  cli.add_flag("-q,--quiet", opt.quiet, "Do not report per-connection errors in --forward/-k");
  cli.add_flag("-v,--verbose", opt.verbose, "Report connections and byte counts on stderr");
  cli.set_version_flag("--version", "vsockcat " VSOCKCAT_VERSION);
  cli.add_option("address", opt.addresses, "ADDRESS, or FROM TO (`-` or stdio: stdin/stdout)")
      ->type_name("ADDRESS");
  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = cli.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  if (opt.quiet && opt.verbose) opt.quiet = false;

  // splice(2) and send() to a closed peer must fail with EPIPE, not kill us.
  ::signal(SIGPIPE, SIG_IGN);
  // Each forwarded connection holds two sockets and two splice pipes: use the hard limit.
  if (rlimit rl{}; ::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    g_nofile = rl;  // --exec children get the limit they would have had
    rl.rlim_cur = rl.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &rl);
  }
  auto loop = EventLoop::Create();
  if (!loop.ok()) {
    Say("{}", loop.error().ToString());
    return kExitError;
  }
  App app(std::move(opt), loop->get());
  if (!app.Configure()) return kExitUsage;
  g_loop = loop->get();
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  int rc = app.Run();
  g_loop = nullptr;
  return rc;
}

}  // namespace
}  // namespace vsockd::vsockcat

int main(int argc, char** argv) {
  return vsockd::RunMain("vsockcat", vsockd::vsockcat::Main, argc, argv);
}
