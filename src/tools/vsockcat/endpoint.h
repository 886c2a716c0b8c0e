// vsockcat endpoints: the address words vsockcat accepts (libvsock's vsock://, hvsock://,
// unix: plus socat-style tcp:/tcp-listen:/vsock-listen:/unix-listen: words), listening on
// them, and connecting to them without blocking from an EventLoop (Dialer).
//
// Callers: vsockcat's main.cc and its tests. Threading: Dialer runs on the EventLoop's
// thread; the rest are plain functions and values.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"
#include "vsock/vsock.h"

namespace vsockd::vsockcat {

struct Endpoint {
  enum class Kind { kLibvsock, kTcp };
  // What the word itself says about its role (socat's TCP-LISTEN vs TCP-CONNECT, ...).
  enum class Role { kAny, kListen, kConnect };

  Kind kind = Kind::kLibvsock;
  Role role = Role::kAny;
  vsock::Address address;  // kLibvsock
  std::string host;        // kTcp: empty = any address (listen only)
  uint16_t port = 0;       // kTcp
  std::string text;        // as the user wrote it, for messages
  // SOCK_SEQPACKET (kLibvsock only): --seqpacket for vsock/hvsock, or the unix-seqpacket:
  // word. Each relayed read becomes one message.
  bool seqpacket = false;

  bool is_tcp() const { return kind == Kind::kTcp; }
  // Canonical text for messages.
  std::string ToString() const;
};

// Parses one address word. Fails with EINVAL and a message naming the word and the problem.
// `for_listen` allows the forms that only make sense for listening (tcp:PORT with no host,
// port 0 = any).
Result<Endpoint> ParseEndpoint(std::string_view text, bool for_listen);

// The address words, for --help and error messages.
extern const char* const kAddressHelp;

// A listening socket: a libvsock Listener (which removes its Unix socket file when closed)
// or a TCP one.
struct ListenSocket {
  vsock::Listener vsock_listener;
  Fd tcp;
  int fd() const { return tcp.valid() ? tcp.get() : vsock_listener.native_handle(); }
  // Where it listens ("tcp:127.0.0.1:4242", "unix:/run/x_5000"), for -v messages.
  std::string Describe() const;
};

// Listens on `ep` (non-blocking, close-on-exec). TCP listeners set SO_REUSEADDR; a TCP
// listener with no host is dual-stack (IPv4 only where IPv6 is off). Errors carry a readable
// context ("listen on tcp:127.0.0.1:80: Permission denied").
Result<ListenSocket> Listen(const Endpoint& ep);

// Accepts one connection from a non-blocking listener: the fd (blocking, close-on-exec), or
// EAGAIN when none is waiting.
Result<Fd> Accept(int listener_fd);

// Turns a failed connect into the message vsockcat prints after "vsockcat: ADDRESS: ".
std::string ExplainConnectError(const Endpoint& ep, std::error_code ec, const std::string& why);

// One outgoing connection, non-blocking, driven by an EventLoop: libvsock's Connector for
// vsock/hybrid/unix, a non-blocking TCP connect (trying each resolved address in turn) for
// tcp. on_done runs exactly once, from the loop (never from inside Start), with the
// connected fd (left non-blocking) or an error whose context is a full readable message.
// Destroying the Dialer cancels the attempt (on_done does not run).
class Dialer {
 public:
  using Done = std::function<void(Result<Fd>)>;
  Dialer(EventLoop* loop, Endpoint ep, std::chrono::milliseconds timeout, Done on_done);
  ~Dialer();
  Dialer(const Dialer&) = delete;
  Dialer& operator=(const Dialer&) = delete;
  void Start();

 private:
  void StartNextTcp();
  void OnEvent();
  void Watch(int fd, uint32_t events);
  void Unwatch();
  void Finish(Result<Fd> result);
  void Fail(std::error_code ec, const std::string& why);

  EventLoop* loop_;
  Endpoint ep_;
  std::chrono::milliseconds timeout_;
  Done on_done_;
  vsock::Connector connector_;
  Fd tcp_fd_;
  std::vector<std::pair<sockaddr_storage, socklen_t>> tcp_addrs_;
  size_t tcp_next_ = 0;
  std::error_code tcp_last_error_;
  int watched_ = -1;
  EventLoop::TimerId timer_ = 0;
  bool finished_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace vsockd::vsockcat
