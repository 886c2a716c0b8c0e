#include "tools/vsockcat/endpoint.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <charconv>
#include <cstring>

namespace vsockd::vsockcat {
namespace {

bool StartsWithNoCase(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(text[i])) != prefix[i]) return false;
  }
  return true;
}

Error BadAddress(std::string_view text, std::string_view what) {
  return MakeError(EINVAL, "address '{}': {}", text, what);
}

// "[HOST:]PORT" (listen) or "HOST:PORT"; HOST may be "[v6]".
Status ParseHostPort(std::string_view text, std::string_view rest, bool for_listen, Endpoint* ep) {
  std::string_view host, port;
  if (!rest.empty() && rest.front() == '[') {
    size_t close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      return BadAddress(text, "expected [IPv6]:PORT");
    }
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else if (size_t colon = rest.rfind(':'); colon != std::string_view::npos) {
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return BadAddress(text, "write IPv6 hosts in brackets: tcp:[::1]:PORT");
    }
  } else {
    port = rest;
  }
  if (host.empty() && !for_listen) {
    return BadAddress(text, "a TCP address to connect to needs a host: tcp:HOST:PORT");
  }
  unsigned value = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || ptr != port.data() + port.size() || value > 65535 ||
      (value == 0 && !for_listen)) {
    return BadAddress(text, fmt::format("TCP port '{}' is not a number 1..65535", port));
  }
  if (host.find_first_of(" \t/") != std::string_view::npos) {
    return BadAddress(text, fmt::format("bad host '{}'", host));
  }
  ep->kind = Endpoint::Kind::kTcp;
  ep->host = std::string(host);
  ep->port = static_cast<uint16_t>(value);
  return OkStatus();
}

std::error_code SysError(int e) { return {e, std::system_category()}; }

std::string SockaddrText(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
    return fmt::format("{}:{}", buf, ntohs(in->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
    return fmt::format("[{}]:{}", buf, ntohs(in6->sin6_port));
  }
  return "?";
}

// Resolves a TCP endpoint (numeric port). Errors name the host.
Result<std::vector<std::pair<sockaddr_storage, socklen_t>>> Resolve(const Endpoint& ep,
                                                                    bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* res = nullptr;
  std::string port = std::to_string(ep.port);
  int rc = ::getaddrinfo(ep.host.empty() ? nullptr : ep.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    return MakeError(rc == EAI_SYSTEM ? errno : EHOSTUNREACH, "cannot resolve host '{}': {}",
                     ep.host, gai_strerror(rc));
  }
  std::vector<std::pair<sockaddr_storage, socklen_t>> out;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
    sockaddr_storage ss{};
    std::memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    out.emplace_back(ss, static_cast<socklen_t>(ai->ai_addrlen));
  }
  ::freeaddrinfo(res);
  if (out.empty()) return MakeError(EHOSTUNREACH, "host '{}' has no address", ep.host);
  return out;
}

Result<Fd> ListenTcpOn(const sockaddr* sa, socklen_t len, bool dual_stack) {
  Fd fd(::socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoError("socket");
  int one = 1, zero = 0;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (dual_stack && sa->sa_family == AF_INET6) {
    ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  }
  if (::bind(fd.get(), sa, len) != 0) return ErrnoError("bind {}", SockaddrText(sa));
  if (::listen(fd.get(), 128) != 0) return ErrnoError("listen");
  return fd;
}

}  // namespace

const char* const kAddressHelp =
    "Addresses (connect / listen):\n"
    "  vsock://CID:PORT     AF_VSOCK (in a guest); also vsock:CID:PORT and CID:PORT.\n"
    "                       CID may be host (2), local (1), any. Listen: vsock://any:PORT\n"
    "  PORT                 listen only: vsock://any:PORT\n"
    "  vsock-connect:CID:PORT, vsock-listen:PORT   socat's words for the same\n"
    "  hvsock://PATH:PORT   through vsockd (PATH = its --uds-path). Connect: guest port\n"
    "                       PORT. Listen: PATH_PORT, what guests reach at host port PORT\n"
    "  unix:PATH            plain Unix socket; also unix-connect:PATH, unix-listen:PATH\n"
    "  unix-seqpacket:PATH  Unix SOCK_SEQPACKET (listen: also unix-seqpacket-listen:PATH)\n"
    "  tcp:HOST:PORT        TCP (IPv6 hosts in brackets: tcp:[::1]:80). Listen: tcp:PORT\n"
    "                       (all addresses) or tcp:HOST:PORT; port 0 = any\n"
    "  tcp-connect:HOST:PORT, tcp-listen:[HOST:]PORT (tcp-l:)   socat's words\n";

std::string Endpoint::ToString() const {
  if (kind == Kind::kLibvsock) return address.to_string();
  if (host.empty()) return fmt::format("tcp:{}", port);
  if (host.find(':') != std::string::npos) return fmt::format("tcp:[{}]:{}", host, port);
  return fmt::format("tcp:{}:{}", host, port);
}

Result<Endpoint> ParseEndpoint(std::string_view text, bool for_listen) {
  Endpoint ep;
  ep.text = std::string(text);
  if (text.empty()) return BadAddress(text, "empty address");
  struct Word {
    const char* prefix;
    enum { kTcp, kVsock, kUnix, kUnixSeqpacket } what;
    Endpoint::Role role;
  };
  static const Word kWords[] = {
      {"tcp-listen:", Word::kTcp, Endpoint::Role::kListen},
      {"tcp-l:", Word::kTcp, Endpoint::Role::kListen},
      {"tcp-connect:", Word::kTcp, Endpoint::Role::kConnect},
      {"tcp://", Word::kTcp, Endpoint::Role::kAny},
      {"tcp:", Word::kTcp, Endpoint::Role::kAny},
      {"vsock-listen:", Word::kVsock, Endpoint::Role::kListen},
      {"vsock-l:", Word::kVsock, Endpoint::Role::kListen},
      {"vsock-connect:", Word::kVsock, Endpoint::Role::kConnect},
      {"unix-listen:", Word::kUnix, Endpoint::Role::kListen},
      {"unix-l:", Word::kUnix, Endpoint::Role::kListen},
      {"unix-connect:", Word::kUnix, Endpoint::Role::kConnect},
      {"unix-seqpacket-listen:", Word::kUnixSeqpacket, Endpoint::Role::kListen},
      {"unix-seqpacket:", Word::kUnixSeqpacket, Endpoint::Role::kAny},
  };
  for (const Word& w : kWords) {
    if (!StartsWithNoCase(text, w.prefix)) continue;
    std::string_view rest = text.substr(std::strlen(w.prefix));
    ep.role = w.role;
    const bool listen = for_listen || w.role == Endpoint::Role::kListen;
    if (w.role == Endpoint::Role::kConnect && for_listen) {
      return BadAddress(text, "a connect address where a listening address is needed");
    }
    if (w.what == Word::kTcp) {
      VSOCKD_RETURN_IF_ERROR(ParseHostPort(text, rest, listen, &ep));
      return ep;
    }
    if (rest.empty()) return BadAddress(text, "nothing after the ':'");
    const bool unix_word = w.what == Word::kUnix || w.what == Word::kUnixSeqpacket;
    ep.seqpacket = w.what == Word::kUnixSeqpacket;
    std::string inner = unix_word ? "unix:" + std::string(rest) : "vsock:" + std::string(rest);
    if (w.what == Word::kVsock && listen && rest.find(':') == std::string_view::npos) {
      inner = "vsock:any:" + std::string(rest);  // socat's VSOCK-LISTEN:PORT
    }
    std::error_code ec;
    std::string why;
    auto addr = vsock::Address::parse(inner, ec, &why);
    if (!addr) return BadAddress(text, why);
    ep.address = *addr;
    return ep;
  }
  std::error_code ec;
  std::string why;
  auto addr = vsock::Address::parse(text, ec, &why);
  if (!addr) return MakeError(EINVAL, "{}", why);
  ep.address = *addr;
  if (!for_listen && addr->is_vsock() && addr->cid() == vsock::cid_any) {
    return BadAddress(text, "cannot connect to CID 'any' (a bare PORT is for -l)");
  }
  return ep;
}

std::string ListenSocket::Describe() const {
  if (tcp.valid()) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(tcp.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "tcp:?";
    return "tcp:" + SockaddrText(reinterpret_cast<sockaddr*>(&ss));
  }
  const vsock::Address& a = vsock_listener.local_address();
  if (a.is_hybrid()) {
    return "unix:" + a.hybrid_listen_path(vsock_listener.type()) + " (" + a.to_string() + ")";
  }
  return a.to_string();
}

Result<ListenSocket> Listen(const Endpoint& ep) {
  ListenSocket ls;
  if (ep.is_tcp()) {
    if (ep.host.empty()) {
      // Dual-stack first, like ncat; IPv4 only where IPv6 is unavailable.
      sockaddr_in6 in6{};
      in6.sin6_family = AF_INET6;
      in6.sin6_addr = in6addr_any;
      in6.sin6_port = htons(ep.port);
      auto fd = ListenTcpOn(reinterpret_cast<sockaddr*>(&in6), sizeof in6, true);
      if (fd.ok() || fd.error().code != EAFNOSUPPORT) {
        if (!fd.ok())
          return MakeError(fd.error().code, "listen on {}: {}", ep.ToString(), fd.error().context);
        ls.tcp = std::move(*fd);
        return ls;
      }
      sockaddr_in in{};
      in.sin_family = AF_INET;
      in.sin_addr.s_addr = htonl(INADDR_ANY);
      in.sin_port = htons(ep.port);
      fd = ListenTcpOn(reinterpret_cast<sockaddr*>(&in), sizeof in, false);
      if (!fd.ok()) {
        return MakeError(fd.error().code, "listen on {}: {}", ep.ToString(), fd.error().context);
      }
      ls.tcp = std::move(*fd);
      return ls;
    }
    auto addrs = Resolve(ep, true);
    if (!addrs.ok()) {
      return MakeError(addrs.error().code, "listen on {}: {}", ep.ToString(),
                       addrs.error().context);
    }
    auto& [ss, len] = addrs->front();
    auto fd = ListenTcpOn(reinterpret_cast<sockaddr*>(&ss), len, false);
    if (!fd.ok()) {
      return MakeError(fd.error().code, "listen on {}: {}", ep.ToString(), fd.error().context);
    }
    ls.tcp = std::move(*fd);
    return ls;
  }
  std::error_code ec;
  ls.vsock_listener = vsock::listen(
      ep.address, ep.seqpacket ? vsock::SocketType::seqpacket : vsock::SocketType::stream, ec);
  if (ec) {
    const auto type = ep.seqpacket ? vsock::SocketType::seqpacket : vsock::SocketType::stream;
    std::string where =
        ep.address.is_hybrid()
            ? ep.address.to_string() + " (unix:" + ep.address.hybrid_listen_path(type) + ")"
            : ep.address.to_string();
    int code = &ec.category() == &std::system_category() ? ec.value() : EINVAL;
    return MakeError(code, "listen on {}: {}", where, ec.message());
  }
  ls.vsock_listener.set_nonblocking(true, ec);
  if (ec) return MakeError(EIO, "listen on {}: {}", ep.ToString(), ec.message());
  return ls;
}

Result<Fd> Accept(int listener_fd) {
  while (true) {
    int fd = ::accept4(listener_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) return Fd(fd);
    if (errno == EINTR || errno == ECONNABORTED) continue;
    return ErrnoError("accept");
  }
}

std::string ExplainConnectError(const Endpoint& ep, std::error_code ec, const std::string& why) {
  // Keep only the part after libvsock's "connect to 'ADDR': " prefix: we print ADDR already.
  std::string detail = why;
  if (size_t p = detail.find("': "); detail.starts_with("connect to '") && p != std::string::npos) {
    detail = detail.substr(p + 3);
  }
  if (ep.is_tcp()) {
    if (ec == std::errc::connection_refused) return "connection refused (nothing listens there)";
    if (ec == std::errc::timed_out) return "connection timed out";
    return detail.empty() ? ec.message() : detail;
  }
  const vsock::Address& a = ep.address;
  if (ec == vsock::errc::handshake_refused) {
    if (detail.find("refused by vsockd") != std::string::npos &&
        detail.find("refused by guest") == std::string::npos &&
        detail.find("connection refused") == std::string::npos) {
      return "vsockd could not connect to the guest (" + detail + ")";
    }
    return fmt::format("the guest refused the connection (no listener on port {})", a.port());
  }
  if (ec == vsock::errc::handshake_timeout) {
    return "vsockd did not answer the CONNECT in time (" + detail + ")";
  }
  if (ec == vsock::errc::bad_handshake_reply) {
    return "this is not a vsockd hybrid socket (" + detail + ")";
  }
  if (a.is_hybrid() || a.is_unix()) {
    if (ec == std::errc::no_such_file_or_directory) {
      return a.is_hybrid() ? fmt::format(
                                 "no vsockd hybrid socket at {} (is vsockd running "
                                 "with --uds-path {}?)",
                                 a.path(), a.path())
                           : fmt::format("no socket at {}", a.path());
    }
    if (ec == std::errc::connection_refused) {
      return fmt::format("nothing listens on {} any more (stale socket file)", a.path());
    }
  }
  if (a.is_vsock() && ec == std::errc::connection_refused) {
    return fmt::format("connection refused (nothing listens on port {} of CID {})", a.port(),
                       a.cid());
  }
  if (ec == std::errc::timed_out) return "connection timed out";
  return detail.empty() ? ec.message() : detail;
}

// ---- Dialer ---------------------------------------------------------------------------

Dialer::Dialer(EventLoop* loop, Endpoint ep, std::chrono::milliseconds timeout, Done on_done)
    : loop_(loop), ep_(std::move(ep)), timeout_(timeout), on_done_(std::move(on_done)) {}

Dialer::~Dialer() {
  *alive_ = false;
  Unwatch();
  if (timer_ != 0) loop_->CancelTimer(timer_);
}

void Dialer::Watch(int fd, uint32_t events) {
  if (watched_ == fd) {
    (void)loop_->Modify(fd, events);
    return;
  }
  Unwatch();
  if (loop_->Add(fd, events, [this](uint32_t) { OnEvent(); }).ok()) watched_ = fd;
}

void Dialer::Unwatch() {
  if (watched_ >= 0) loop_->Remove(watched_);
  watched_ = -1;
}

void Dialer::Start() {
  if (timeout_.count() > 0) {
    timer_ = loop_->AddTimer(timeout_, [this] {
      timer_ = 0;
      Fail(ep_.is_tcp() ? SysError(ETIMEDOUT) : connector_.timeout_error(), "connection timed out");
    });
  }
  if (ep_.is_tcp()) {
    auto addrs = Resolve(ep_, false);
    if (!addrs.ok()) {
      std::error_code ec = SysError(addrs.error().code);
      std::string why = addrs.error().context;
      auto alive = alive_;
      loop_->Defer([this, alive, ec, why] {
        if (*alive) Fail(ec, why);
      });
      return;
    }
    tcp_addrs_ = std::move(*addrs);
    StartNextTcp();
    return;
  }
  std::error_code ec;
  connector_.start(ep_.address,
                   ep_.seqpacket ? vsock::SocketType::seqpacket : vsock::SocketType::stream, ec,
                   timeout_);
  if (ec || connector_.done()) {
    auto alive = alive_;
    loop_->Defer([this, alive, ec] {
      if (!*alive) return;
      if (ec) return Fail(ec, connector_.reason());
      Finish(Fd(connector_.take_stream().release()));
    });
    return;
  }
  Watch(connector_.native_handle(), static_cast<uint32_t>(connector_.events()));
}

// Starts connecting to the next resolved address (or reports the last error).
void Dialer::StartNextTcp() {
  while (tcp_next_ < tcp_addrs_.size()) {
    auto& [ss, len] = tcp_addrs_[tcp_next_++];
    Unwatch();
    tcp_fd_.Reset(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!tcp_fd_) {
      tcp_last_error_ = SysError(errno);
      continue;
    }
    int rc = ::connect(tcp_fd_.get(), reinterpret_cast<sockaddr*>(&ss), len);
    if (rc == 0 || errno == EINPROGRESS) {
      Watch(tcp_fd_.get(), EPOLLOUT);
      return;
    }
    tcp_last_error_ = SysError(errno);
    tcp_fd_.Reset();
  }
  auto alive = alive_;
  loop_->Defer([this, alive] {
    if (*alive) Fail(tcp_last_error_, tcp_last_error_.message());
  });
}

void Dialer::OnEvent() {
  if (finished_) return;
  if (ep_.is_tcp()) {
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(tcp_fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err == 0) {
      int one = 1;
      ::setsockopt(tcp_fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      Unwatch();
      return Finish(std::move(tcp_fd_));
    }
    tcp_last_error_ = SysError(err);
    Unwatch();
    tcp_fd_.Reset();
    return StartNextTcp();
  }
  std::error_code ec;
  connector_.step(ec);
  if (ec) return Fail(ec, connector_.reason());
  if (connector_.done()) {
    Unwatch();
    return Finish(Fd(connector_.take_stream().release()));
  }
  Watch(connector_.native_handle(), static_cast<uint32_t>(connector_.events()));
}

void Dialer::Fail(std::error_code ec, const std::string& why) {
  if (finished_) return;
  std::string msg = fmt::format("{}: {}", ep_.text, ExplainConnectError(ep_, ec, why));
  int code = &ec.category() == &std::system_category() ? ec.value() : ECONNREFUSED;
  if (ec == std::errc::timed_out) code = ETIMEDOUT;
  Finish(Error{code, msg});
}

void Dialer::Finish(Result<Fd> result) {
  if (finished_) return;
  finished_ = true;
  Unwatch();
  if (timer_ != 0) loop_->CancelTimer(timer_);
  timer_ = 0;
  // on_done may destroy this Dialer: move it out first.
  Done done = std::move(on_done_);
  done(std::move(result));
}

}  // namespace vsockd::vsockcat
