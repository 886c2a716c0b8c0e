// FakeHostBackend: a HostBackend for tests and fuzzing. Every accepted connect is one end of
// a real AF_UNIX socketpair; the test holds the other end ("the host peer").
//
// Callers: vsock tests, the vsock fuzzer, integration tests. Threading: the event loop thread.
// Completion is always delivered from the event loop (Defer), never from inside
// ConnectToHost(), as the HostBackend contract requires.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/fd.h"
#include "vsock/host_backend.h"

namespace vsockd::vsock::testing {

class FakeHostBackend : public HostBackend {
 public:
  explicit FakeHostBackend(EventLoop* loop) : loop_(loop) {}

  std::unique_ptr<PendingConnect> ConnectToHost(const ConnectionInfo& info,
                                                ConnectDone done) override;

  // Connects to these ports (or all ports) fail with ECONNREFUSED.
  void Refuse(uint32_t host_port) { refused_.insert(host_port); }
  void set_refuse_all(bool on) { refuse_all_ = on; }
  // While held, connects stay pending until ReleaseHeld().
  void set_hold(bool on) { hold_ = on; }
  void ReleaseHeld();
  // Socket type of STREAM connections' pairs (SEQPACKET connections always get SOCK_SEQPACKET;
  // SOCK_SEQPACKET makes every device write/read one record, which
  // lets tests see the device's syscall boundaries).
  void set_socket_type(int type) { socket_type_ = type; }
  // SO_SNDBUF for the device's end (a small one makes a slow host reader quickly).
  void set_device_sndbuf(int bytes) { device_sndbuf_ = bytes; }
  // Bytes handed to the device as HostStream::prefix with the next accepted stream.
  void set_prefix(std::string prefix) { prefix_ = std::move(prefix); }

  // The host peer of the oldest accepted, not yet taken connection to host_port.
  Fd TakePeer(uint32_t host_port);
  size_t connect_calls() const { return connect_calls_; }
  // Every ConnectToHost() request, in order (the device's routing decisions).
  const std::vector<ConnectionInfo>& infos() const { return infos_; }
  size_t cancelled() const { return *cancelled_; }

 private:
  struct Held {
    ConnectionInfo info;
    ConnectDone done;
    std::shared_ptr<bool> live;
  };
  void Complete(const ConnectionInfo& info, const ConnectDone& done);

  EventLoop* loop_;
  std::set<uint32_t> refused_;
  bool refuse_all_ = false;
  bool hold_ = false;
  std::string prefix_;
  int socket_type_ = SOCK_STREAM;
  int device_sndbuf_ = 0;
  std::deque<Held> held_;
  std::map<uint32_t, std::deque<Fd>> peers_;
  size_t connect_calls_ = 0;
  std::vector<ConnectionInfo> infos_;
  std::shared_ptr<size_t> cancelled_ = std::make_shared<size_t>(0);
};

}  // namespace vsockd::vsock::testing
