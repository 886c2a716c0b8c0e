#include "tests/integration/echo_server.h"

#include <sys/socket.h>

#include "base/unix_socket.h"

namespace vsockd::testing {

EchoServer::EchoServer(const std::string& path) {
  auto l = ListenUnix(path, 4096, /*nonblocking=*/true);
  if (!l.ok()) return;
  listener_ = std::move(*l);
  thread_.Call([&] {
    (void)thread_.loop()->Add(listener_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); });
    return 0;
  });
}

EchoServer::~EchoServer() {
  thread_.Call([&] {
    for (auto& [fd, c] : conns_) thread_.loop()->Remove(fd);
    conns_.clear();
    if (listener_) thread_.loop()->Remove(listener_.get());
    return 0;
  });
}

void EchoServer::OnAccept() {
  while (true) {
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    auto c = std::make_unique<Conn>();
    c->fd.Reset(fd);
    conns_[fd] = std::move(c);
    accepted_++;
    int now = ++open_;
    int peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
    (void)thread_.loop()->Add(fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                              [this, fd](uint32_t ev) { OnConn(fd, ev); });
  }
}

void EchoServer::OnConn(int fd, uint32_t events) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  if ((events & EPOLLERR) != 0) return CloseConn(fd);
  Pump(c);
}

void EchoServer::Pump(Conn& c) {
  int fd = c.fd.get();
  uint8_t buf[65536];
  while (true) {
    // Write back what we have first; stop reading while the peer does not take it.
    while (!c.pending.empty()) {
      ssize_t n = ::send(fd, c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN) return;  // EPOLLOUT (edge) will call us again
        return CloseConn(fd);
      }
      c.pending.erase(c.pending.begin(), c.pending.begin() + n);
    }
    if (c.eof) {
      ::shutdown(fd, SHUT_WR);
      return CloseConn(fd);
    }
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EAGAIN) return;
      return CloseConn(fd);
    }
    if (n == 0) {
      c.eof = true;
      continue;
    }
    c.pending.insert(c.pending.end(), buf, buf + n);
  }
}

void EchoServer::CloseConn(int fd) {
  thread_.loop()->Remove(fd);
  conns_.erase(fd);
  --open_;
}

}  // namespace vsockd::testing
