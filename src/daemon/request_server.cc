#include "daemon/request_server.h"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "base/log.h"
#include "base/unix_socket.h"

namespace vsockd::daemon {

Result<Fd> ListenEndpoint(const std::string& endpoint, unsigned unix_mode) {
  std::string path;
  if (endpoint.rfind("unix:", 0) == 0) {
    path = endpoint.substr(5);
  } else if (!endpoint.empty() &&
             (endpoint[0] == '/' || endpoint[0] == '.' || endpoint[0] == '@')) {
    path = endpoint;
  }
  if (!path.empty()) {
    auto fd = ListenUnix(path, 16);
    if (!fd.ok()) return fd.take_error();
    if (path[0] != '@' && ::chmod(path.c_str(), unix_mode) != 0) {
      return ErrnoError("chmod {:o} '{}'", unix_mode, path);
    }
    return fd;
  }
  // ADDR:PORT or [ADDR6]:PORT, numeric: no name lookups in a daemon's start.
  std::string host;
  std::string port;
  if (!endpoint.empty() && endpoint[0] == '[') {
    size_t close = endpoint.find("]:");
    if (close == std::string::npos) {
      return MakeError(EINVAL, "'{}' is not [ADDR]:PORT", endpoint);
    }
    host = endpoint.substr(1, close - 1);
    port = endpoint.substr(close + 2);
  } else {
    size_t colon = endpoint.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      return MakeError(EINVAL, "'{}' is not unix:PATH, ADDR:PORT or [ADDR6]:PORT", endpoint);
    }
    host = endpoint.substr(0, colon);
    port = endpoint.substr(colon + 1);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return MakeError(EINVAL, "'{}': {} (a numeric address and port)", endpoint, ::gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> owned(res, ::freeaddrinfo);
  Fd fd(::socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoError("socket for '{}'", endpoint);
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), res->ai_addr, res->ai_addrlen) != 0)
    return ErrnoError("bind '{}'", endpoint);
  if (::listen(fd.get(), 16) != 0) return ErrnoError("listen '{}'", endpoint);
  return fd;
}

RequestServer::RequestServer(EventLoop* loop, Fd listener, Handler handler, Options options)
    : loop_(loop),
      listener_(std::move(listener)),
      handler_(std::move(handler)),
      options_(std::move(options)) {}

RequestServer::~RequestServer() {
  while (!clients_.empty()) Close(clients_.begin()->first);
  if (listener_) loop_->Remove(listener_.get());
}

Status RequestServer::Start() {
  return loop_->Add(listener_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); });
}

void RequestServer::OnAccept() {
  for (;;) {
    Fd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) return;                                        // EAGAIN, or a client that went away
    if (clients_.size() >= options_.max_clients) continue;  // closed: busy
    const int raw = fd.get();
    auto client = std::make_unique<Client>();
    client->fd = std::move(fd);
    Client* c = client.get();
    clients_[raw] = std::move(client);
    if (!loop_->Add(raw, EPOLLIN, [this, raw](uint32_t events) { OnClient(raw, events); }).ok()) {
      clients_.erase(raw);
      continue;
    }
    ArmTimer(raw, c);
  }
}

void RequestServer::ArmTimer(int fd, Client* c) {
  if (c->timer != 0) loop_->CancelTimer(c->timer);
  c->timer = loop_->AddTimer(options_.idle_timeout, [this, fd] {
    auto it = clients_.find(fd);
    if (it == clients_.end()) return;
    it->second->timer = 0;
    Close(fd);
  });
}

void RequestServer::OnClient(int fd, uint32_t events) {
  auto it = clients_.find(fd);
  if (it == clients_.end()) return;
  Client* c = it->second.get();
  if (events & EPOLLOUT) {
    Flush(fd, c);
    if (clients_.find(fd) == clients_.end()) return;
  }
  if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || c->closing) return;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      c->in.append(buf, static_cast<size_t>(n));
      if (c->in.size() > options_.max_request + options_.delimiter.size()) {
        Close(fd);  // over the bound: not a request we answer
        return;
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    // EOF or error: answer what is complete, then go.
    Serve(c);
    c->closing = true;
    Flush(fd, c);
    return;
  }
  ArmTimer(fd, c);
  Serve(c);
  Flush(fd, c);
}

void RequestServer::Serve(Client* c) {
  size_t end;
  while (!c->closing && (end = c->in.find(options_.delimiter)) != std::string::npos) {
    std::string request = c->in.substr(0, end);
    c->in.erase(0, end + options_.delimiter.size());
    c->out += handler_(request);
    if (options_.close_after_reply) c->closing = true;
  }
}

void RequestServer::Flush(int fd, Client* c) {
  while (!c->out.empty()) {
    ssize_t n = ::send(fd, c->out.data(), c->out.size(), MSG_NOSIGNAL);
    if (n > 0) {
      c->out.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      (void)loop_->Modify(fd, EPOLLIN | EPOLLOUT);
      return;
    }
    Close(fd);
    return;
  }
  if (c->closing) {
    Close(fd);
    return;
  }
  (void)loop_->Modify(fd, EPOLLIN);
}

void RequestServer::Close(int fd) {
  auto it = clients_.find(fd);
  if (it == clients_.end()) return;
  if (it->second->timer != 0) loop_->CancelTimer(it->second->timer);
  loop_->Remove(fd);
  clients_.erase(it);
}

}  // namespace vsockd::daemon
