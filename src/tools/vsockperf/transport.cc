#include "tools/vsockperf/transport.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "base/log.h"
#include "base/unix_socket.h"
#include "vguest/guest.h"
#include "vsock/vsock.h"

namespace vsockd::vsockperf {
namespace {

// One receive buffer for every fd connection: on_data consumes synchronously and there is
// one loop thread.
std::vector<uint8_t>& ReadBuffer() {
  static std::vector<uint8_t> buf(256 * 1024);
  return buf;
}

// A libvsock stream as a non-blocking fd in the loop (level-triggered).
class FdConn : public Conn, public std::enable_shared_from_this<FdConn> {
 public:
  FdConn(EventLoop* loop, int fd) : loop_(loop), fd_(fd) {}
  ~FdConn() override { CloseFd(); }

  Status Register() {
    // SEQPACKET: every read is one message, so a short read does not mean "drained".
    messages_ = SocketType(fd_) == SOCK_SEQPACKET;
    std::weak_ptr<FdConn> weak = weak_from_this();
    VSOCKD_RETURN_IF_ERROR(loop_->Add(fd_, EPOLLIN, [weak](uint32_t events) {
      if (auto self = weak.lock()) self->OnEvents(events);
    }));
    registered_ = true;
    return OkStatus();
  }

  size_t Write(const void* data, size_t len) override {
    if (closed_ || failed_ || write_shut_) return 0;
    ssize_t n;
    do {
      n = ::send(fd_, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        Fail(ErrnoError("send"));
        return 0;
      }
      n = 0;
    }
    if (static_cast<size_t>(n) < len) {
      want_write_ = true;
      UpdateInterest();
    }
    return static_cast<size_t>(n);
  }

  void ShutdownWrite() override {
    if (closed_ || write_shut_) return;
    write_shut_ = true;
    want_write_ = false;
    ::shutdown(fd_, SHUT_WR);
    UpdateInterest();
  }

  void Close() override { CloseFd(); }

 private:
  // Not virtual: also called by the destructor.
  void CloseFd() {
    if (closed_) return;
    closed_ = true;
    if (registered_) loop_->Remove(fd_);
    registered_ = false;
    ::close(fd_);
  }

  void UpdateInterest() {
    if (!registered_) return;
    uint32_t ev = (read_eof_ ? 0u : uint32_t{EPOLLIN}) | (want_write_ ? uint32_t{EPOLLOUT} : 0u);
    if (ev == 0) {
      // Nothing left to wait for; EPOLLHUP would still be reported forever.
      loop_->Remove(fd_);
      registered_ = false;
      return;
    }
    (void)loop_->Modify(fd_, ev);
  }

  void OnEvents(uint32_t events) {
    if (closed_) return;
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !read_eof_) {
      // A few reads per wakeup, then let the other connections run.
      for (int i = 0; i < 4 && !closed_ && !read_eof_; ++i) {
        auto& buf = ReadBuffer();
        ssize_t n = ::read(fd_, buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n < 0) return Fail(ErrnoError("read"));
        if (n == 0) {
          read_eof_ = true;
          UpdateInterest();
          if (on_eof) on_eof();
          break;
        }
        if (on_data) on_data(std::span<const uint8_t>(buf.data(), static_cast<size_t>(n)));
        if (!messages_ && static_cast<size_t>(n) < buf.size()) break;
      }
    }
    if (closed_) return;
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && want_write_) {
      want_write_ = false;
      UpdateInterest();
      if (on_writable) on_writable();
    } else if ((events & (EPOLLERR | EPOLLHUP)) && read_eof_ && !want_write_) {
      UpdateInterest();
    }
  }

  void Fail(Error e) {
    if (failed_ || closed_) return;
    failed_ = true;
    want_write_ = false;
    read_eof_ = true;
    UpdateInterest();
    // Not from inside Write(): the caller is in the middle of its own bookkeeping.
    std::weak_ptr<FdConn> weak = weak_from_this();
    loop_->Defer([weak, e = std::move(e)] {
      auto self = weak.lock();
      if (self && !self->closed_ && self->on_error) self->on_error(e);
    });
  }

  EventLoop* loop_;
  int fd_;
  bool registered_ = false;
  bool messages_ = false;  // SOCK_SEQPACKET: one message per read
  bool closed_ = false;
  bool failed_ = false;
  bool read_eof_ = false;
  bool write_shut_ = false;
  bool want_write_ = false;
};

// errno-style code for a libvsock error (its own codes map to their std::errc condition).
int ErrnoOf(const std::error_code& ec) {
  if (ec.category() == std::system_category()) return ec.value();
  if (ec == std::errc::connection_refused) return ECONNREFUSED;
  if (ec == std::errc::timed_out) return ETIMEDOUT;
  if (ec == std::errc::invalid_argument) return EINVAL;
  return EPROTO;
}

Result<std::shared_ptr<Conn>> AdoptStream(EventLoop* loop, ::vsock::Stream stream) {
  std::error_code ec;
  stream.set_nonblocking(true, ec);
  if (ec) return MakeError(ErrnoOf(ec), "set_nonblocking: {}", ec.message());
  auto conn = std::make_shared<FdConn>(loop, stream.release());
  VSOCKD_RETURN_IF_ERROR(conn->Register());
  return std::shared_ptr<Conn>(std::move(conn));
}

class LibvsockTransport : public Transport {
 public:
  LibvsockTransport(EventLoop* loop, ::vsock::Address address, bool seqpacket)
      : loop_(loop), address_(std::move(address)), seqpacket_(seqpacket) {}
  ~LibvsockTransport() override {
    if (listening_) loop_->Remove(listener_.native_handle());
  }

  std::string name() const override {
    switch (address_.kind()) {
      case ::vsock::Address::Kind::vsock:
        return "vsock";
      case ::vsock::Address::Kind::hybrid:
        return "hybrid";
      case ::vsock::Address::Kind::unix_socket:
        return "unix";
    }
    return "?";
  }
  std::string description() const override {
    return address_.to_string() + (seqpacket_ ? " (seqpacket)" : "");
  }

  void Connect(std::function<void(Result<std::shared_ptr<Conn>>)> done) override {
    // Blocking connect (bounded): the client has nothing else to do meanwhile, and a
    // sequential connect is exactly what the connect-rate test measures.
    std::error_code ec;
    std::string why;
    // SEQPACKET: the fd is used the same way (each send one message, each read one
    // message; the read buffer is larger than any message vsockperf sends).
    ::vsock::Stream s =
        seqpacket_
            ? ::vsock::Stream(
                  ::vsock::connect_seqpacket(address_, std::chrono::seconds(5), ec, &why).release(),
                  {}, address_)
            : ::vsock::connect(address_, std::chrono::seconds(5), ec, &why);
    Result<std::shared_ptr<Conn>> r = MakeError(EIO, "unset");
    if (ec) {
      r = MakeError(ErrnoOf(ec), "{}",
                    why.empty() ? "connect " + address_.to_string() + ": " + ec.message() : why);
    } else {
      r = AdoptStream(loop_, std::move(s));
    }
    loop_->Defer([done = std::move(done), r = std::move(r)]() mutable { done(std::move(r)); });
  }

  Status Listen(std::function<void(std::shared_ptr<Conn>)> on_accept) override {
    std::error_code ec;
    listener_ = ::vsock::listen(
        address_, seqpacket_ ? ::vsock::SocketType::seqpacket : ::vsock::SocketType::stream, ec);
    if (ec) return MakeError(ErrnoOf(ec), "listen {}: {}", address_.to_string(), ec.message());
    listener_.set_nonblocking(true, ec);
    if (ec) return MakeError(ErrnoOf(ec), "listen {}: {}", address_.to_string(), ec.message());
    on_accept_ = std::move(on_accept);
    VSOCKD_RETURN_IF_ERROR(
        loop_->Add(listener_.native_handle(), EPOLLIN, [this](uint32_t) { AcceptAll(); }));
    listening_ = true;
    return OkStatus();
  }

 private:
  void AcceptAll() {
    while (true) {
      std::error_code ec;
      ::vsock::Stream s = listener_.accept(ec);
      if (ec == std::errc::operation_would_block) return;
      if (ec) {
        LOG_WARN("accept on {}: {}", address_.to_string(), ec.message());
        return;
      }
      auto conn = AdoptStream(loop_, std::move(s));
      if (!conn.ok()) {
        LOG_WARN("accepted connection: {}", conn.error().ToString());
        continue;
      }
      on_accept_(std::move(*conn));
    }
  }

  EventLoop* loop_;
  ::vsock::Address address_;
  bool seqpacket_;
  ::vsock::Listener listener_;
  bool listening_ = false;
  std::function<void(std::shared_ptr<Conn>)> on_accept_;
};

// A vguest stream used directly.
class VguestConn : public Conn, public std::enable_shared_from_this<VguestConn> {
 public:
  explicit VguestConn(vguest::Stream* s) : stream_(s) {}
  ~VguestConn() override { CloseStream(); }

  void Hook() {
    std::weak_ptr<VguestConn> weak = weak_from_this();
    stream_->on_data = [weak](std::span<const uint8_t> d) {
      auto self = weak.lock();
      if (self && self->on_data) self->on_data(d);
    };
    stream_->on_eof = [weak] {
      auto self = weak.lock();
      if (!self) return;
      self->eof_ = true;
      if (self->on_eof) self->on_eof();
    };
    stream_->on_writable = [weak] {
      auto self = weak.lock();
      if (self && self->on_writable) self->on_writable();
    };
    stream_->on_closed = [weak](const Status& st) {
      auto self = weak.lock();
      if (!self || self->stream_ == nullptr) return;
      // A clean end, or a reset after both directions were done, is not an error.
      if (st.ok() || (self->eof_ && self->write_shut_)) return;
      if (self->on_error) self->on_error(st.error());
    };
  }

  size_t Write(const void* data, size_t len) override {
    return stream_ != nullptr ? stream_->Write(data, len) : 0;
  }
  void ShutdownWrite() override {
    if (stream_ == nullptr || write_shut_) return;
    write_shut_ = true;
    stream_->Shutdown(false, true);
  }
  void Close() override { CloseStream(); }

 private:
  // Not virtual: also called by the destructor.
  void CloseStream() {
    if (stream_ == nullptr) return;
    vguest::Stream* s = stream_;
    stream_ = nullptr;
    s->Close();  // last: it may destroy the callback we are running in
  }

  vguest::Stream* stream_;
  bool eof_ = false;
  bool write_shut_ = false;
};

std::shared_ptr<Conn> WrapVguest(vguest::Stream* s) {
  auto conn = std::make_shared<VguestConn>(s);
  conn->Hook();
  return conn;
}

class VguestTransport : public Transport {
 public:
  VguestTransport(std::unique_ptr<vguest::Guest> guest, std::string socket_path, uint32_t port)
      : guest_(std::move(guest)), socket_path_(std::move(socket_path)), port_(port) {}
  ~VguestTransport() override {
    if (listening_) guest_->Unlisten(port_);
  }

  std::string name() const override { return "vguest"; }
  std::string description() const override {
    return fmt::format("vguest CID {} on {}, port {}", guest_->cid(), socket_path_, port_);
  }

  void Connect(std::function<void(Result<std::shared_ptr<Conn>>)> done) override {
    guest_->Connect(port_, [this, done = std::move(done)](vguest::Stream* s, const Status& st) {
      if (!st.ok()) {
        s->Close();
        if (st.error().code == ECONNRESET) {
          done(MakeError(ECONNREFUSED, "vguest connect to host CID 2 port {}: reset (RST)", port_));
        } else {
          done(MakeError(st.error().code, "vguest connect to host CID 2 port {}: {}", port_,
                         st.error().context));
        }
        return;
      }
      done(WrapVguest(s));
    });
  }

  Status Listen(std::function<void(std::shared_ptr<Conn>)> on_accept) override {
    VSOCKD_RETURN_IF_ERROR(guest_->Listen(
        port_,
        [on_accept = std::move(on_accept)](vguest::Stream* s) { on_accept(WrapVguest(s)); }));
    listening_ = true;
    return OkStatus();
  }

 private:
  std::unique_ptr<vguest::Guest> guest_;
  std::string socket_path_;
  uint32_t port_;
  bool listening_ = false;
};

}  // namespace

std::unique_ptr<Transport> MakeLibvsockTransport(EventLoop* loop, ::vsock::Address address,
                                                 bool seqpacket) {
  return std::make_unique<LibvsockTransport>(loop, std::move(address), seqpacket);
}

Result<std::unique_ptr<Transport>> MakeVguestTransport(EventLoop* loop,
                                                       const std::string& socket_path,
                                                       uint32_t port) {
  vguest::GuestOptions options;
  options.socket_path = socket_path;
  options.attach_timeout = std::chrono::milliseconds(2000);
  auto guest = vguest::Guest::Attach(loop, options);
  if (!guest.ok()) return guest.take_error();
  return std::unique_ptr<Transport>(
      std::make_unique<VguestTransport>(std::move(*guest), socket_path, port));
}

}  // namespace vsockd::vsockperf
