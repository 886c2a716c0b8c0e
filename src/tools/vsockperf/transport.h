// vsockperf's transports: one event-driven connection interface over libvsock streams
// (kernel AF_VSOCK, vsockd's hybrid sockets, plain Unix sockets) and over vguest streams
// (a virtual guest attached to vsockd's vhost-user socket).
//
// Role: the client and server code (client.cc, server.cc) are written once against Conn and
// Transport; the transport decides how bytes move. libvsock streams become non-blocking fds
// in the EventLoop; vguest streams are used directly (no relay, no extra copy), so the
// figures measure the transport, not an adapter.
// Threading: everything runs on one EventLoop thread; callbacks run there.
//
// Lifetime: Conns are shared_ptr. Close() stops all callbacks at once; the owner may drop
// its pointer from inside a callback only through EventLoop::Defer (the Conn may still be on
// the stack).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "base/event_loop.h"
#include "base/result.h"
#include "vsock/address.h"

namespace vsockd::vguest {
class Guest;
}

namespace vsockd::vsockperf {

class Conn {
 public:
  virtual ~Conn() = default;
  // Like send(2) on a non-blocking socket: returns the bytes taken (maybe fewer than len);
  // when fewer, on_writable runs once more fits.
  virtual size_t Write(const void* data, size_t len) = 0;
  // Half-close: the peer sees EOF once everything written has arrived.
  virtual void ShutdownWrite() = 0;
  // No more callbacks after this.
  virtual void Close() = 0;

  std::function<void(std::span<const uint8_t>)> on_data;
  std::function<void()> on_eof;
  std::function<void()> on_writable;
  // The connection failed (reset, I/O error). Not called after Close().
  std::function<void(const Error&)> on_error;
};

class Transport {
 public:
  virtual ~Transport() = default;
  // A human name: "vsock", "hybrid", "unix" or "vguest".
  virtual std::string name() const = 0;
  // What we connect to / listen on, for output.
  virtual std::string description() const = 0;
  // Opens a connection to the configured destination; `done` runs on the loop (maybe inside
  // this call for blocking transports).
  virtual void Connect(std::function<void(Result<std::shared_ptr<Conn>>)> done) = 0;
  // Accepts connections on the configured address until the Transport goes away.
  virtual Status Listen(std::function<void(std::shared_ptr<Conn>)> on_accept) = 0;
};

// libvsock: `address` is vsock://, hvsock:// or unix:. `seqpacket`: SOCK_SEQPACKET sockets
// (hybrid: vsockd's ".seqpacket" names); every Write is then one message, so callers keep
// writes within the message limit (kMaxSeqpacketMessage).
std::unique_ptr<Transport> MakeLibvsockTransport(EventLoop* loop, ::vsock::Address address,
                                                 bool seqpacket = false);
// Largest message --seqpacket allows: fits an AF_UNIX SEQPACKET socket's default send buffer
// (about 208 KiB) and vsock's default buf_alloc (256 KiB).
inline constexpr uint32_t kMaxSeqpacketMessage = 128 * 1024;

// vguest: attaches to `socket_path` (vsockd's vhost-user socket) as a virtual guest. Connect
// goes to host CID 2 port `port`; Listen accepts on guest port `port`. Must run on the loop
// thread.
Result<std::unique_ptr<Transport>> MakeVguestTransport(EventLoop* loop,
                                                       const std::string& socket_path,
                                                       uint32_t port);

}  // namespace vsockd::vsockperf
