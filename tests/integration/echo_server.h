// EchoServer: a host service on a Unix socket path that echoes every connection, event
// driven on its own thread, for tests with many concurrent connections. On a client's EOF it
// finishes echoing, then shuts down its own write side (half-close kept).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/fd.h"
#include "tests/integration/harness.h"

namespace vsockd::testing {

class EchoServer {
 public:
  explicit EchoServer(const std::string& path);
  ~EchoServer();
  bool ok() const { return listener_.valid(); }
  int accepted() const { return accepted_.load(); }
  int open_now() const { return open_.load(); }
  int peak_open() const { return peak_.load(); }

 private:
  struct Conn {
    Fd fd;
    std::vector<uint8_t> pending;  // read but not yet written back
    bool eof = false;
  };
  void OnAccept();
  void OnConn(int fd, uint32_t events);
  void Pump(Conn& c);
  void CloseConn(int fd);

  LoopThread thread_;
  Fd listener_;
  std::unordered_map<int, std::unique_ptr<Conn>> conns_;
  std::atomic<int> accepted_{0}, open_{0}, peak_{0};
};

}  // namespace vsockd::testing
