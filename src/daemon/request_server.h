// RequestServer: a small request/response server for vsockd's control socket and metrics
// endpoint, on the daemon's control loop.
//
// Role: accepts on a listening socket (Unix or TCP), reads each client's bytes until a
// request is complete (it ends with `delimiter`: "\n" for the control protocol's JSON lines,
// "\r\n\r\n" for an HTTP request head), answers with what `handler` returns, and then keeps
// the connection for the next request (control) or closes it once the answer is out (HTTP).
// Bounded: at most `max_clients` at once (more are closed at accept), `max_request` bytes per
// request (a client over it is closed), and a client idle for `idle_timeout` is closed, so a
// local user cannot hold vsockd's control loop or memory.
// Callers: daemon/daemon.cc. Threading: the loop's thread only; handler runs there.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"

namespace vsockd::daemon {

// Listens on "unix:PATH", a plain PATH, "ADDR:PORT" or "[ADDR6]:PORT" (numeric only). A Unix
// socket's file gets `unix_mode` (its directory's permissions still apply).
Result<Fd> ListenEndpoint(const std::string& endpoint, unsigned unix_mode);

class RequestServer {
 public:
  struct Options {
    std::string delimiter = "\n";
    bool close_after_reply = false;
    size_t max_request = 64 * 1024;
    size_t max_clients = 16;
    std::chrono::milliseconds idle_timeout{30000};
  };
  using Handler = std::function<std::string(std::string_view request)>;

  RequestServer(EventLoop* loop, Fd listener, Handler handler, Options options);
  ~RequestServer();
  RequestServer(const RequestServer&) = delete;
  RequestServer& operator=(const RequestServer&) = delete;

  Status Start();
  size_t clients() const { return clients_.size(); }

 private:
  struct Client {
    Fd fd;
    std::string in;
    std::string out;
    EventLoop::TimerId timer{};
    bool closing = false;  // close once `out` is written
  };
  void OnAccept();
  void OnClient(int fd, uint32_t events);
  void Serve(Client* c);
  void Flush(int fd, Client* c);
  void Close(int fd);
  void ArmTimer(int fd, Client* c);

  EventLoop* loop_;
  Fd listener_;
  Handler handler_;
  Options options_;
  std::map<int, std::unique_ptr<Client>> clients_;
};

}  // namespace vsockd::daemon
