#include "host/unix_backend.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "base/log.h"
#include "base/unix_socket.h"
#include "host/caller_name.h"
#include "host/connect_command.h"

namespace vsockd::host {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kFirstBackoff{1};
constexpr milliseconds kMaxBackoff{50};
// After accept() fails for lack of fds or memory, stop watching the listener this long
// (level-triggered epoll would otherwise spin on the pending connection).
constexpr milliseconds kAcceptPause{100};
// Accepts per readiness event, so a connect storm cannot starve the data path.
constexpr int kMaxAcceptsPerEvent = 64;
// Bytes per read while waiting for the command line: bounds the prefix we may read past it.
constexpr size_t kCommandReadChunk = 256;
// Bytes of unread client data we swallow before closing after an ERR line, so the client
// reads a clean EOF after it rather than ECONNRESET.
constexpr size_t kMaxDrainBytes = 64 * 1024;

// A non-blocking AF_UNIX stream connect to `path`, our end first bound to the abstract name
// `caller` (when not empty). A taken name is not an error: we then connect unbound.
Result<Fd> ConnectAsCaller(const std::string& path, const std::string& caller, int type) {
  sockaddr_un addr;
  auto len = MakeUnixAddress(path, &addr);
  if (!len.ok()) return len.take_error();
  Fd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return ErrnoError("socket(AF_UNIX)");
  if (!caller.empty()) {
    sockaddr_un local{};
    local.sun_family = AF_UNIX;
    size_t n = std::min(caller.size(), sizeof local.sun_path - 1);
    std::memcpy(local.sun_path + 1, caller.data(), n);  // sun_path[0] = 0: abstract
    auto local_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&local), local_len) < 0) {
      LOG_DEBUG("hybrid: cannot bind caller name '{}' ({}); connecting unbound", caller,
                std::strerror(errno));
    }
  }
  int rc;
  do {
    rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), *len);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) return ErrnoError("connect '{}'", path);
  return fd;
}

// One guest -> host connect: a non-blocking connect to the first candidate path that exists
// ("P_<port>", then the prefixes), retried while the listener's backlog is full. The result
// is always delivered from a loop timer, never from inside ConnectToHost; destroying the op
// cancels the timer, so `done` is then never called.
class HostConnectOp : public vsock::PendingConnect {
 public:
  HostConnectOp(EventLoop* loop, std::vector<std::string> paths, std::string caller, uint32_t port,
                int type, EventLoop::Clock::time_point deadline,
                vsock::HostBackend::ConnectDone done)
      : loop_(loop),
        paths_(std::move(paths)),
        caller_(std::move(caller)),
        port_(port),
        type_(type),
        deadline_(deadline),
        done_(std::move(done)) {}

  ~HostConnectOp() override {
    if (timer_ != 0) loop_->CancelTimer(timer_);
  }

  void Schedule(milliseconds delay) {
    timer_ = loop_->AddTimer(delay, [this] {
      timer_ = 0;
      Attempt();
    });
  }

 private:
  void Attempt() {
    if (paths_.empty()) {
      Finish(MakeError(ENOENT, "host port {}: no host socket path configured", port_));
      return;
    }
    auto fd = ConnectAsCaller(paths_[index_], caller_, type_);
    // The next candidate only when this one does not exist at all, or (SEQPACKET) is a
    // listener of the other type.
    while (!fd.ok() && (fd.error().code == ENOENT || fd.error().code == EPROTOTYPE) &&
           index_ + 1 < paths_.size()) {
      ++index_;
      fd = ConnectAsCaller(paths_[index_], caller_, type_);
    }
    if (fd.ok()) {
      Finish(vsock::HostStream{std::move(*fd), {}});
      return;
    }
    const std::string& path = paths_[index_];
    int code = fd.error().code;
    if (code == EAGAIN || code == EWOULDBLOCK) {
      auto now = EventLoop::Clock::now();
      if (now < deadline_) {
        auto left = std::chrono::ceil<milliseconds>(deadline_ - now);
        Schedule(std::min(backoff_, left));
        backoff_ = std::min(backoff_ * 2, kMaxBackoff);
        return;
      }
      Finish(
          MakeError(ETIMEDOUT, "host port {}: listener '{}' kept its backlog full", port_, path));
      return;
    }
    Finish(Error{code, fmt::format("host port {}: {}", port_, fd.error().context)});
  }

  void Finish(Result<vsock::HostStream> result) {
    auto done = std::move(done_);
    done_ = nullptr;
    done(std::move(result));  // may destroy this op: nothing may follow
  }

  EventLoop* loop_;
  std::vector<std::string> paths_;
  size_t index_ = 0;  // the candidate being tried
  std::string caller_;
  uint32_t port_;
  int type_;  // SOCK_STREAM or SOCK_SEQPACKET
  EventLoop::Clock::time_point deadline_;
  vsock::HostBackend::ConnectDone done_;
  EventLoop::TimerId timer_ = 0;
  milliseconds backoff_ = kFirstBackoff;
};

std::string GuestFailureReason(uint32_t port, const Error& error) {
  switch (error.code) {
    case ECONNREFUSED:
      return fmt::format("connection refused by guest port {}", port);
    case ETIMEDOUT:
      return fmt::format("guest did not answer on port {} in time", port);
    case ECONNRESET:
      return fmt::format("connection to guest port {} was reset", port);
    case EACCES:  // the VM's policy (allow-guest-ports)
      return fmt::format("guest port {} not allowed by policy", port);
    case EAGAIN:  // the VM's budget (connections, host fds, connect rate)
      return fmt::format("guest port {} refused: VM over budget", port);
    default: {
      // Only the error's name: its text ("Broken pipe") could hold "ok", and a reply must fit
      // the 64 bytes Kata's dialer reads.
      const char* name = ::strerrorname_np(error.code);
      if (name == nullptr)
        return fmt::format("cannot connect to guest port {} (error {})", port, error.code);
      return fmt::format("cannot connect to guest port {} ({})", port, name);
    }
  }
}

bool FileIdentity(const std::string& path, dev_t* dev, ino_t* ino) {
  if (path.empty() || path[0] == '@') return false;  // abstract: no file
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return false;
  *dev = st.st_dev;
  *ino = st.st_ino;
  return true;
}

}  // namespace

struct UnixBackend::Client {
  enum class Phase { kReadingCommand, kWaitingGuest };

  Fd fd;
  bool seqpacket = false;  // accepted on a ".seqpacket" listener
  Phase phase = Phase::kReadingCommand;
  ConnectCommandReader reader;
  EventLoop::TimerId timer = 0;
  std::optional<uint64_t> connect_id;  // set while the device holds a pending connect
  uint32_t guest_port = 0;

  Client(Fd f, size_t max_line) : fd(std::move(f)), reader(max_line) {}
};

UnixBackend::UnixBackend(EventLoop* loop, GuestConnector* connector, UnixBackendOptions options)
    : loop_(loop), connector_(connector), options_(std::move(options)) {
  instance_id_ = options_.instance_id;
  if (instance_id_.empty()) {
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns =
        static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
    instance_id_ = fmt::format("{}.{:x}", ::getpid(), ns);
  }
}

UnixBackend::~UnixBackend() { Shutdown(); }

Result<uint64_t> GuestConnector::ConnectToGuestOfType(uint32_t guest_port, uint16_t type,
                                                      Done done) {
  if (type != vsock::VIRTIO_VSOCK_TYPE_STREAM) {
    return MakeError(EPROTONOSUPPORT, "socket type {} not supported", type);
  }
  return ConnectToGuest(guest_port, std::move(done));
}

std::string UnixBackend::HostPortPath(uint32_t port, uint16_t type) const {
  std::vector<std::string> paths = HostPortPaths(port, type);
  return paths.empty() ? std::string() : paths.front();
}

std::vector<std::string> UnixBackend::HostPortPaths(uint32_t port, uint16_t type) const {
  std::vector<std::string> paths;
  if (type != vsock::VIRTIO_VSOCK_TYPE_STREAM &&
      (type != vsock::VIRTIO_VSOCK_TYPE_SEQPACKET || !options_.seqpacket)) {
    return paths;
  }
  // SEQPACKET: the plain hybrid path first (a SOCK_SEQPACKET listener there, as Cloud
  // Hypervisor's proposal keeps guest-initiated connections on "<path>_<port>"), then ours
  // with ".seqpacket"; a stream listener on the plain path answers EPROTOTYPE, and the connect
  // moves on (HostConnectOp).
  const bool seqpacket = type == vsock::VIRTIO_VSOCK_TYPE_SEQPACKET;
  auto add = [&](const std::string& base) {
    paths.push_back(base);
    if (seqpacket) paths.push_back(base + ".seqpacket");
  };
  if (!options_.uds_path.empty()) add(fmt::format("{}_{}", options_.uds_path, port));
  for (const auto& prefix : options_.host_path_prefixes) add(fmt::format("{}{}", prefix, port));
  return paths;
}

std::vector<std::string> UnixBackend::ListenPaths() const {
  std::vector<std::string> paths;
  for (const auto& l : listeners_) paths.push_back(l->path);
  return paths;
}

std::string UnixBackend::CallerNameFor(const vsock::ConnectionInfo& info) const {
  return FormatCallerName(instance_id_, info.guest_cid, info.guest_port, info.host_port);
}

Status UnixBackend::Start() {
  if (!listeners_.empty()) return MakeError(EALREADY, "hybrid backend already listening");
  std::vector<std::string> paths;
  if (!options_.uds_path.empty()) paths.push_back(options_.uds_path);
  paths.insert(paths.end(), options_.listen_paths.begin(), options_.listen_paths.end());
  const size_t stream_count = paths.size();
  if (options_.seqpacket) {
    for (size_t i = 0; i < stream_count; ++i) paths.push_back(paths[i] + ".seqpacket");
  }
  for (size_t i = 0; i < paths.size(); ++i) {
    const std::string& path = paths[i];
    const bool seqpacket = i >= stream_count;
    auto fd = ListenUnix(path, options_.listen_backlog, /*nonblocking=*/true,
                         seqpacket ? SOCK_SEQPACKET : SOCK_STREAM);
    if (!fd.ok()) {
      Shutdown();
      return MakeError(fd.error().code, "{}", fd.error().context);
    }
    auto listener = std::make_unique<Listener>();
    listener->path = path;
    listener->seqpacket = seqpacket;
    listener->has_identity = FileIdentity(path, &listener->dev, &listener->ino);
    Listener* l = listener.get();
    if (Status added = loop_->Add(fd->get(), EPOLLIN, [this, l](uint32_t) { OnListenReadable(l); });
        !added.ok()) {
      ::unlink(path.c_str());
      Shutdown();
      return added;
    }
    listener->fd = std::move(*fd);
    listeners_.push_back(std::move(listener));
    LOG_DEBUG("hybrid: listening on '{}'", path);
  }
  return OkStatus();
}

void UnixBackend::Shutdown() {
  for (auto& listener : listeners_) {
    if (listener->accept_resume_timer != 0) {
      loop_->CancelTimer(listener->accept_resume_timer);
      listener->accept_resume_timer = 0;
    }
    if (listener->fd) {
      loop_->Remove(listener->fd.get());
      listener->fd.Reset();
      dev_t dev;
      ino_t ino;
      if (listener->has_identity && FileIdentity(listener->path, &dev, &ino) &&
          dev == listener->dev && ino == listener->ino) {
        ::unlink(listener->path.c_str());
      }
    }
  }
  listeners_.clear();
  std::vector<uint64_t> ids;
  ids.reserve(clients_.size());
  for (const auto& [id, client] : clients_) ids.push_back(id);
  for (uint64_t id : ids) DropClient(id);
}

std::unique_ptr<vsock::PendingConnect> UnixBackend::ConnectToHost(const vsock::ConnectionInfo& info,
                                                                  ConnectDone done) {
  auto op = std::make_unique<HostConnectOp>(
      loop_, HostPortPaths(info.host_port, info.type),
      options_.bind_caller_name ? CallerNameFor(info) : std::string(), info.host_port,
      info.type == vsock::VIRTIO_VSOCK_TYPE_SEQPACKET ? SOCK_SEQPACKET : SOCK_STREAM,
      EventLoop::Clock::now() + options_.host_connect_timeout, std::move(done));
  op->Schedule(milliseconds(0));
  return op;
}

void UnixBackend::OnListenReadable(Listener* listener) {
  for (int i = 0; i < kMaxAcceptsPerEvent; ++i) {
    int raw = ::accept4(listener->fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (raw < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      LOG_RATELIMITED(LogLevel::kWarn, "hybrid: accept on '{}': {}; pausing accepts",
                      listener->path, std::strerror(errno));
      if (!listener->accept_paused && loop_->Modify(listener->fd.get(), 0).ok()) {
        listener->accept_paused = true;
        listener->accept_resume_timer = loop_->AddTimer(kAcceptPause, [this, listener] {
          listener->accept_resume_timer = 0;
          listener->accept_paused = false;
          if (listener->fd) (void)loop_->Modify(listener->fd.get(), EPOLLIN);
        });
      }
      return;
    }
    Fd fd(raw);
    if (clients_.size() >= options_.max_handshakes) {
      LOG_RATELIMITED(LogLevel::kWarn, "hybrid: {} handshakes in progress; rejecting a client",
                      clients_.size());
      std::string line = MakeErrLine("too many connection attempts in progress");
      (void)::send(raw, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      continue;  // `fd` closes it
    }
    uint64_t id = next_client_id_++;
    auto client = std::make_unique<Client>(std::move(fd), options_.max_command_line);
    client->seqpacket = listener->seqpacket;
    Status added =
        loop_->Add(raw, EPOLLIN, [this, id](uint32_t events) { OnClientEvent(id, events); });
    if (!added.ok()) {
      LOG_RATELIMITED(LogLevel::kWarn, "hybrid: {}", added.error().ToString());
      continue;
    }
    client->timer = loop_->AddTimer(options_.command_timeout, [this, id] { OnCommandTimeout(id); });
    clients_.emplace(id, std::move(client));
  }
}

void UnixBackend::OnClientEvent(uint64_t id, uint32_t events) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return;
  Client& client = *it->second;
  if (client.phase == Client::Phase::kWaitingGuest) {
    // Registered with no events: only EPOLLHUP/EPOLLERR get here. The host program closed
    // its socket while the guest had not answered yet.
    if ((events & (EPOLLHUP | EPOLLERR)) != 0) {
      LOG_DEBUG("hybrid: client gave up waiting for guest port {}", client.guest_port);
      DropClient(id);
    }
    return;
  }
  char buf[kCommandReadChunk];
  if (client.seqpacket) {
    // One message, exactly the command line: message boundaries are the protocol here.
    ssize_t n;
    do {
      n = ::recv(client.fd.get(), buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      DropClient(id);
      return;
    }
    if (n == 0) {
      FailClient(id, "end of stream before a 'CONNECT <port>' message");
      return;
    }
    if (static_cast<size_t>(n) > sizeof buf || static_cast<size_t>(n) > options_.max_command_line) {
      FailClient(id, "first message is longer than a 'CONNECT <port>' line");
      return;
    }
    auto state = client.reader.Append(std::string_view(buf, static_cast<size_t>(n)));
    if (state == ConnectCommandReader::State::kError) {
      std::string reason = client.reader.error();
      FailClient(id, reason);
    } else if (state != ConnectCommandReader::State::kComplete || !client.reader.prefix().empty()) {
      FailClient(id, "first message must be exactly one 'CONNECT <port>' line");
    } else {
      OnCommandComplete(id);
    }
    return;
  }
  for (;;) {
    ssize_t n = ::recv(client.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      LOG_DEBUG("hybrid: client read: {}", std::strerror(errno));
      DropClient(id);
      return;
    }
    if (n == 0) {
      FailClient(id, "end of stream before a complete 'CONNECT <port>' line");
      return;
    }
    switch (client.reader.Append(std::string_view(buf, static_cast<size_t>(n)))) {
      case ConnectCommandReader::State::kNeedMore:
        continue;
      case ConnectCommandReader::State::kError: {
        LOG_RATELIMITED(LogLevel::kInfo, "hybrid: rejected a host client: {}",
                        client.reader.error());
        std::string reason = client.reader.error();
        FailClient(id, reason);
        return;
      }
      case ConnectCommandReader::State::kComplete:
        OnCommandComplete(id);
        return;
    }
  }
}

void UnixBackend::OnCommandComplete(uint64_t id) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return;
  Client& client = *it->second;
  client.phase = Client::Phase::kWaitingGuest;
  client.guest_port = client.reader.port();
  if (client.timer != 0) {
    loop_->CancelTimer(client.timer);
    client.timer = 0;
  }
  // Stop reading (later bytes are the connection's and wait in the socket), but keep
  // hearing about a hangup: EPOLLHUP/EPOLLERR are reported even with no events requested.
  // A mere shutdown(SHUT_WR) from the client is EPOLLRDHUP, not EPOLLHUP, so a half-closed
  // client still gets its connection.
  if (Status s = loop_->Modify(client.fd.get(), 0); !s.ok()) {
    LOG_WARN("hybrid: {}", s.error().ToString());
    DropClient(id);
    return;
  }
  uint32_t port = client.guest_port;
  LOG_DEBUG("hybrid: host client asks for guest port {}", port);
  auto on_answer = [this, id](Result<uint32_t> result) {
    return OnGuestAnswer(id, std::move(result));
  };
  auto connect = client.seqpacket ? connector_->ConnectToGuestOfType(
                                        port, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET, on_answer)
                                  : connector_->ConnectToGuest(port, on_answer);
  it = clients_.find(id);
  if (it == clients_.end()) return;  // answered (and finished) synchronously
  if (!connect.ok()) {
    FailClient(id, GuestFailureReason(port, connect.error()));
    return;
  }
  it->second->connect_id = *connect;
}

std::optional<vsock::HostStream> UnixBackend::OnGuestAnswer(uint64_t id, Result<uint32_t> result) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return std::nullopt;
  Client& client = *it->second;
  client.connect_id.reset();  // the device is done with it: nothing to cancel any more
  if (!result.ok()) {
    LOG_DEBUG("hybrid: guest port {}: {}", client.guest_port, result.error().ToString());
    FailClient(id, GuestFailureReason(client.guest_port, result.error()));
    return std::nullopt;
  }
  uint32_t n = options_.ok_reply == OkReply::kHostPort ? *result : client.guest_port;
  std::string line = fmt::format("OK {}\n", n);
  // Nothing was written to this socket before, so a short line always fits its buffer; a
  // failure means the client is gone.
  ssize_t written;
  do {
    written = ::send(client.fd.get(), line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (written < 0 && errno == EINTR);
  if (written != static_cast<ssize_t>(line.size())) {
    LOG_DEBUG("hybrid: host client for guest port {} went away before OK", client.guest_port);
    DropClient(id);
    return std::nullopt;
  }
  loop_->Remove(client.fd.get());
  vsock::HostStream stream{std::move(client.fd), client.reader.TakePrefix()};
  DropClient(id);  // fd already moved out: only forgets the bookkeeping
  return stream;
}

void UnixBackend::OnCommandTimeout(uint64_t id) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return;
  it->second->timer = 0;
  FailClient(id, "timeout waiting for a complete 'CONNECT <port>' line");
}

void UnixBackend::FailClient(uint64_t id, std::string_view reason) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return;
  int fd = it->second->fd.get();
  std::string line = MakeErrLine(reason);
  ssize_t written;
  do {
    written = ::send(fd, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (written < 0 && errno == EINTR);
  // Swallow what the client already sent (payload behind its command): closing an AF_UNIX
  // socket with unread data makes the peer's read fail with ECONNRESET after our line.
  char buf[4096];
  for (size_t drained = 0; drained < kMaxDrainBytes;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    drained += static_cast<size_t>(n);
  }
  DropClient(id);
}

void UnixBackend::DropClient(uint64_t id) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return;
  std::unique_ptr<Client> client = std::move(it->second);
  clients_.erase(it);
  if (client->timer != 0) loop_->CancelTimer(client->timer);
  if (client->connect_id) connector_->CancelConnectToGuest(*client->connect_id);
  if (client->fd) loop_->Remove(client->fd.get());
  // `client` (and its fd) goes here.
}

}  // namespace vsockd::host
