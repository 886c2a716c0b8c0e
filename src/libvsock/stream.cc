// vsock::Stream, vsock::Connector and vsock::connect (see vsock/stream.h).
#include "vsock/stream.h"

#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

#include "libvsock/internal.h"

namespace vsock {

namespace detail {

std::string printable(std::string_view text, size_t max) {
  std::string out;
  for (char c : text.substr(0, max)) {
    auto u = static_cast<unsigned char>(c);
    out.push_back(u >= 0x20 && u < 0x7f ? c : '?');
  }
  if (text.size() > max) out += "...";
  return out;
}

std::error_code set_nonblocking(int fd, bool on) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return last_error();
  int want = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (want != flags && ::fcntl(fd, F_SETFL, want) < 0) return last_error();
  return {};
}

}  // namespace detail

namespace {

timeval to_timeval(std::chrono::milliseconds t) {
  if (t.count() < 0) t = std::chrono::milliseconds(0);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(t.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
  return tv;
}

std::optional<Address> sock_name(int fd, bool peer) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  int r = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
               : ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (r < 0) return std::nullopt;
  std::error_code ec;
  return Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len, ec);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Stream

Stream::Stream(Stream&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      nonblocking_(other.nonblocking_),
      local_(std::move(other.local_)),
      peer_(std::move(other.peer_)) {}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    nonblocking_ = other.nonblocking_;
    local_ = std::move(other.local_);
    peer_ = std::move(other.peer_);
  }
  return *this;
}

int Stream::release() { return std::exchange(fd_, -1); }

void Stream::close() {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

size_t Stream::read_some(void* buf, size_t len, std::error_code& ec) {
  ec.clear();
  if (fd_ < 0) {
    ec = detail::sys_error(EBADF);
    return 0;
  }
  while (true) {
    ssize_t n = ::recv(fd_, buf, len, 0);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno == EINTR) continue;
    ec = detail::io_error(errno, nonblocking_);
    return 0;
  }
}

size_t Stream::read(void* buf, size_t len, std::error_code& ec) {
  ec.clear();
  size_t done = 0;
  auto* p = static_cast<char*>(buf);
  while (done < len) {
    size_t n = read_some(p + done, len - done, ec);
    if (ec || n == 0) break;
    done += n;
  }
  return done;
}

size_t Stream::write_some(const void* buf, size_t len, std::error_code& ec) {
  ec.clear();
  if (fd_ < 0) {
    ec = detail::sys_error(EBADF);
    return 0;
  }
  while (true) {
    ssize_t n = ::send(fd_, buf, len, MSG_NOSIGNAL);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno == EINTR) continue;
    ec = detail::io_error(errno, nonblocking_);
    return 0;
  }
}

size_t Stream::write_all(const void* buf, size_t len, std::error_code& ec) {
  ec.clear();
  size_t done = 0;
  const auto* p = static_cast<const char*>(buf);
  while (done < len) {
    size_t n = write_some(p + done, len - done, ec);
    if (ec) break;
    done += n;
  }
  return done;
}

void Stream::shutdown(Shutdown how, std::error_code& ec) {
  ec.clear();
  int h = how == Shutdown::read ? SHUT_RD : how == Shutdown::write ? SHUT_WR : SHUT_RDWR;
  if (::shutdown(fd_, h) < 0) ec = detail::last_error();
}

void Stream::set_nonblocking(bool on, std::error_code& ec) {
  ec = fd_ < 0 ? detail::sys_error(EBADF) : detail::set_nonblocking(fd_, on);
  if (!ec) nonblocking_ = on;
}

void Stream::set_read_timeout(std::chrono::milliseconds timeout, std::error_code& ec) {
  ec.clear();
  timeval tv = to_timeval(timeout);
  if (::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) ec = detail::last_error();
}

void Stream::set_write_timeout(std::chrono::milliseconds timeout, std::error_code& ec) {
  ec.clear();
  timeval tv = to_timeval(timeout);
  if (::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) ec = detail::last_error();
}

// ---------------------------------------------------------------------------------------
// Connector

// Longest hybrid reply line we accept (without '\n'). vsockd's ERR lines are short; Kata
// reads at most 64 bytes.
constexpr size_t kMaxReplyLine = 512;

struct Connector::State {
  enum class Phase { connecting, sending, reading, done, failed };
  Phase phase = Phase::connecting;
  Address address;
  SocketType type = SocketType::stream;
  int fd = -1;
  std::string command;  // "CONNECT <port>\n"
  size_t sent = 0;
  std::string line;  // reply bytes so far
  std::string reason;
  std::error_code error;  // the failure, once failed

  ~State() {
    if (fd >= 0) ::close(fd);
  }

  void fail(std::error_code& ec, std::error_code code, const std::string& what) {
    ec = code;
    error = code;
    reason = "connect to '" + address.to_string() + "': " + what;
    phase = Phase::failed;
    if (fd >= 0) ::close(std::exchange(fd, -1));
  }
  void fail_sys(std::error_code& ec, int e, const char* doing) {
    // Linux answers a vsock connect to a port nobody listens on with a reset.
    if (e == ECONNRESET && phase == Phase::connecting && address.is_vsock()) e = ECONNREFUSED;
    std::error_code code = detail::sys_error(e);
    fail(ec, code, std::string(doing) + ": " + code.message());
  }

  void connected(std::error_code& ec) {
    if (address.is_hybrid()) {
      phase = Phase::sending;
      send_command(ec);
    } else {
      phase = Phase::done;
    }
  }

  void send_command(std::error_code& ec) {
    if (type == SocketType::seqpacket) {
      // One message, all or nothing.
      ssize_t n;
      do {
        n = ::send(fd, command.data(), command.size(), MSG_NOSIGNAL);
      } while (n < 0 && errno == EINTR);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (n < 0) return fail_sys(ec, errno, "sending the CONNECT command");
      sent = command.size();
    }
    while (sent < command.size()) {
      ssize_t n = ::send(fd, command.data() + sent, command.size() - sent, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        return fail_sys(ec, errno, "sending the CONNECT command");
      }
      sent += static_cast<size_t>(n);
    }
    phase = Phase::reading;
    read_reply(ec);
  }

  // Peeks at what arrived and consumes it only up to the '\n', so the first payload bytes
  // behind the reply stay in the socket for the application.
  void read_reply(std::error_code& ec) {
    if (type == SocketType::seqpacket) return read_reply_message(ec);
    char buf[128];
    while (true) {
      ssize_t n = ::recv(fd, buf, sizeof buf, MSG_PEEK);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == ECONNRESET) return refused_without_reply(ec);
        return fail_sys(ec, errno, "reading the handshake reply");
      }
      if (n == 0) return refused_without_reply(ec);
      const char* nl = static_cast<const char*>(std::memchr(buf, '\n', static_cast<size_t>(n)));
      size_t take = nl != nullptr ? static_cast<size_t>(nl - buf) + 1 : static_cast<size_t>(n);
      ssize_t got;
      do {
        got = ::recv(fd, buf, take, 0);
      } while (got < 0 && errno == EINTR);
      if (got != static_cast<ssize_t>(take)) {
        return fail_sys(ec, got < 0 ? errno : EIO, "reading the handshake reply");
      }
      if (nl != nullptr) {
        line.append(buf, take - 1);
        return evaluate(ec);
      }
      line.append(buf, take);
      if (line.size() > kMaxReplyLine) {
        return fail(ec, errc::bad_handshake_reply,
                    "the hybrid reply line is longer than " + std::to_string(kMaxReplyLine) +
                        " bytes: '" + detail::printable(line, 60) + "'");
      }
    }
  }

  // SEQPACKET: the reply is exactly one message, "OK <n>\n" or "ERR <reason>\n".
  void read_reply_message(std::error_code& ec) {
    char buf[kMaxReplyLine + 1];
    ssize_t n;
    do {
      n = ::recv(fd, buf, sizeof buf, MSG_TRUNC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == ECONNRESET) return refused_without_reply(ec);
      return fail_sys(ec, errno, "reading the handshake reply");
    }
    if (n == 0) return refused_without_reply(ec);
    if (static_cast<size_t>(n) > sizeof buf) {
      return fail(
          ec, errc::bad_handshake_reply,
          "the hybrid reply message is longer than " + std::to_string(kMaxReplyLine) + " bytes");
    }
    std::string_view m(buf, static_cast<size_t>(n));
    if (m.back() != '\n' || m.find('\n') != m.size() - 1) {
      return fail(ec, errc::bad_handshake_reply,
                  "the hybrid reply message '" + detail::printable(m, 60) +
                      "' is not one line ending in a newline");
    }
    line.assign(m.substr(0, m.size() - 1));
    evaluate(ec);
  }

  void refused_without_reply(std::error_code& ec) {
    fail(ec, errc::handshake_refused,
         line.empty() ? "the hybrid socket closed without a reply (the guest refused, or "
                        "nothing listens on port " +
                            std::to_string(address.port()) + ")"
                      : "the hybrid socket closed in the middle of its reply '" +
                            detail::printable(line) + "'");
  }

  void evaluate(std::error_code& ec) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string_view l = line;
    if (l.starts_with("OK") && (l.size() == 2 || l[2] == ' ')) {
      phase = Phase::done;
      return;
    }
    if (l == "ERR" || l.starts_with("ERR ")) {
      std::string_view text = l.size() > 4 ? l.substr(4) : std::string_view("no reason given");
      return fail(ec, errc::handshake_refused,
                  "refused by vsockd: " + detail::printable(text, 200));
    }
    fail(ec, errc::bad_handshake_reply,
         "unexpected hybrid reply '" + detail::printable(l) + "' (expected OK or ERR)");
  }
};

Connector::Connector() = default;
Connector::~Connector() = default;
Connector::Connector(Connector&&) noexcept = default;
Connector& Connector::operator=(Connector&&) noexcept = default;

void Connector::start(const Address& address, std::error_code& ec,
                      std::chrono::milliseconds vsock_connect_timeout) {
  start(address, SocketType::stream, ec, vsock_connect_timeout);
}

void Connector::start(const Address& address, SocketType type, std::error_code& ec,
                      std::chrono::milliseconds vsock_connect_timeout) {
  ec.clear();
  state_ = std::make_unique<State>();
  State& s = *state_;
  s.address = address;
  s.type = type;
  if (address.is_vsock() && (address.cid() == cid_any || address.port() == port_any)) {
    return s.fail(ec, errc::invalid_address, "cannot connect to CID or port 'any'");
  }
  if (address.is_hybrid()) {
    if (address.port() == port_any) {
      return s.fail(ec, errc::invalid_address, "cannot connect to port 'any'");
    }
    s.command = "CONNECT " + std::to_string(address.port()) + "\n";
  }
  sockaddr_storage ss;
  Address target = address;
  if (address.is_hybrid() && type == SocketType::seqpacket) {
    target = Address::unix_socket(address.hybrid_connect_path(type));
  }
  socklen_t len = target.to_sockaddr(ss, ec);
  if (ec) {
    std::error_code code = ec;
    return s.fail(ec, code, "bad socket path: " + code.message());
  }
  int family = address.is_vsock() ? AF_VSOCK : AF_UNIX;
  const int sock_type = type == SocketType::seqpacket ? SOCK_SEQPACKET : SOCK_STREAM;
  s.fd = ::socket(family, sock_type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s.fd < 0) return s.fail_sys(ec, errno, "socket");
  if (address.is_vsock() && vsock_connect_timeout.count() > 0) {
    timeval tv = to_timeval(vsock_connect_timeout);
    if (::setsockopt(s.fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof tv) < 0) {
      return s.fail_sys(ec, errno, "setsockopt(SO_VM_SOCKETS_CONNECT_TIMEOUT)");
    }
  }
  int r;
  do {
    r = ::connect(s.fd, reinterpret_cast<sockaddr*>(&ss), len);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return s.connected(ec);
  if (errno == EINPROGRESS) return;  // wait for POLLOUT
  if (errno == EAGAIN && family == AF_UNIX) {
    return s.fail(ec, detail::sys_error(EAGAIN),
                  "the Unix socket's listen backlog is full (try again later)");
  }
  s.fail_sys(ec, errno, "connect");
}

void Connector::step(std::error_code& ec) {
  ec.clear();
  if (!state_) return;
  State& s = *state_;
  switch (s.phase) {
    case State::Phase::connecting: {
      int err = 0;
      socklen_t len = sizeof err;
      if (::getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
        return s.fail_sys(ec, errno, "getsockopt(SO_ERROR)");
      }
      if (err == 0) {
        // SO_ERROR is 0 both when connected and while still in progress: ask the socket.
        sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        if (::getpeername(s.fd, reinterpret_cast<sockaddr*>(&peer), &plen) < 0) {
          if (errno == ENOTCONN) return;  // spurious wake-up
          return s.fail_sys(ec, errno, "getpeername");
        }
        return s.connected(ec);
      }
      if (err == EINPROGRESS || err == EALREADY) return;
      return s.fail_sys(ec, err, "connect");
    }
    case State::Phase::sending:
      return s.send_command(ec);
    case State::Phase::reading:
      return s.read_reply(ec);
    case State::Phase::done:
      return;
    case State::Phase::failed:
      ec = s.error;
      return;
  }
}

bool Connector::done() const { return state_ && state_->phase == State::Phase::done; }

int Connector::native_handle() const { return state_ ? state_->fd : -1; }

short Connector::events() const {
  if (!state_) return 0;
  switch (state_->phase) {
    case State::Phase::connecting:
    case State::Phase::sending:
      return POLLOUT;
    case State::Phase::reading:
      return POLLIN;
    default:
      return 0;
  }
}

std::error_code Connector::timeout_error() const {
  if (state_ && (state_->phase == State::Phase::sending || state_->phase == State::Phase::reading))
    return errc::handshake_timeout;
  return detail::sys_error(ETIMEDOUT);
}

const std::string& Connector::reason() const {
  static const std::string empty;
  return state_ ? state_->reason : empty;
}

Stream Connector::take_stream() {
  if (!done()) return {};
  State& s = *state_;
  int fd = std::exchange(s.fd, -1);
  Address local, peer;
  if (s.address.is_hybrid()) {
    peer = s.address;
  } else {
    local = sock_name(fd, false).value_or(Address());
    peer = sock_name(fd, true).value_or(s.address);
  }
  state_.reset();
  return Stream(fd, std::move(local), std::move(peer));
}

Stream::Stream(int fd, Address local, Address peer)
    : fd_(fd), local_(std::move(local)), peer_(std::move(peer)) {
  if (fd_ >= 0) {
    int flags = ::fcntl(fd_, F_GETFL);
    nonblocking_ = flags >= 0 && (flags & O_NONBLOCK) != 0;
  }
}

// ---------------------------------------------------------------------------------------
// connect

Stream connect(const Address& address, std::chrono::milliseconds timeout, std::error_code& ec,
               std::string* why) {
  return detail::connect_typed(address, SocketType::stream, timeout, ec, why);
}

Stream detail::connect_typed(const Address& address, SocketType type,
                             std::chrono::milliseconds timeout, std::error_code& ec,
                             std::string* why) {
  using Clock = std::chrono::steady_clock;
  timeout = detail::cap_timeout(timeout);
  const bool limited = timeout.count() > 0;
  const auto deadline = Clock::now() + timeout;
  Connector c;
  c.start(address, type, ec, timeout);
  while (!ec && !c.done()) {
    int wait_ms = -1;
    if (limited) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        ec = c.timeout_error();
        if (why != nullptr) {
          *why = "connect to '" + address.to_string() + "': " +
                 (ec == errc::handshake_timeout ? "no hybrid handshake reply within "
                                                : "not connected within ") +
                 std::to_string(timeout.count()) + " ms";
        }
        return {};
      }
      wait_ms = static_cast<int>(std::min<int64_t>(left.count(), 1 << 30));
    }
    pollfd p{c.native_handle(), c.events(), 0};
    int r = ::poll(&p, 1, wait_ms);
    if (r < 0 && errno != EINTR) {
      ec = detail::last_error();
      if (why != nullptr) *why = "connect to '" + address.to_string() + "': poll: " + ec.message();
      return {};
    }
    if (r > 0) c.step(ec);
  }
  if (ec) {
    if (why != nullptr) *why = c.reason();
    return {};
  }
  Stream s = c.take_stream();
  s.set_nonblocking(false, ec);
  if (ec) {
    if (why != nullptr) *why = "connect to '" + address.to_string() + "': fcntl: " + ec.message();
    return {};
  }
  if (why != nullptr) why->clear();
  return s;
}

}  // namespace vsock
