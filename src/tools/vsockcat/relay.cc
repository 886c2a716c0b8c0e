#include "tools/vsockcat/relay.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "base/fd.h"
#include "base/unix_socket.h"

namespace vsockd::vsockcat {
namespace {

// Bytes one direction moves before letting other connections run (fairness in --forward).
constexpr uint64_t kTurnBytes = 4 << 20;

}  // namespace

Relay::Relay(EventLoop* loop, const RelaySide& a, const RelaySide& b, Done on_done,
             size_t buffer_size)
    : loop_(loop), on_done_(std::move(on_done)), buffer_size_(buffer_size) {
  dirs_[0].from = a.in_fd;
  dirs_[0].to = b.out_fd;
  dirs_[0].from_name = a.name;
  dirs_[0].to_name = b.name;
  dirs_[0].eof = a.input_ended;
  dirs_[1].from = b.in_fd;
  dirs_[1].to = a.out_fd;
  dirs_[1].from_name = b.name;
  dirs_[1].to_name = a.name;
  dirs_[1].eof = b.input_ended;
  for (int fd : {a.in_fd, a.out_fd, b.in_fd, b.out_fd}) {
    bool seen = false;
    for (const Watch& w : watches_) seen = seen || w.fd == fd;
    if (!seen) watches_.push_back(Watch{fd});
  }
}

Relay::~Relay() {
  *alive_ = false;
  for (Watch& w : watches_) {
    if (w.added) loop_->Remove(w.fd);
  }
}

RelayStats Relay::stats() const { return RelayStats{dirs_[0].bytes, dirs_[1].bytes, dirs_[0].eof}; }

void Relay::Start() {
  started_ = true;
  for (Direction& d : dirs_) {
    const int from_type = SocketType(d.from);
    const int to_type = SocketType(d.to);
    d.to_is_socket = to_type >= 0;
    d.from_is_seqpacket = from_type == SOCK_SEQPACKET;
    // Splice only between byte streams: a pipe merges messages (and AF_UNIX / vsock
    // SEQPACKET sockets fall back to copying without an error that would tell us).
    if (use_splice_ && to_type == SOCK_STREAM && from_type == SOCK_STREAM) {
      int p[2];
      if (::pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0) {
        d.pipe_r.Reset(p[0]);
        d.pipe_w.Reset(p[1]);
        // As much in flight as the read/write buffer would hold (64 KiB if refused).
        (void)::fcntl(p[1], F_SETPIPE_SZ, static_cast<int>(buffer_size_));
      }
    }
    (void)SetNonBlocking(d.from);
    (void)SetNonBlocking(d.to);
  }
  // The first pass runs deferred: on_done must never run inside Start().
  auto alive = alive_;
  loop_->Defer([this, alive] {
    if (*alive) Pump();
  });
}

// The two ways a direction buffers bytes: a pipe (splice mode: the kernel moves the pages)
// or our own buffer. Step() below is the same for both.
size_t Relay::Buffered(const Direction& d) { return d.pipe_r ? d.in_pipe : d.tail - d.head; }

ssize_t Relay::WriteOut(Direction& d) {
  if (d.pipe_r) {
    return ::splice(d.pipe_r.get(), nullptr, d.to, nullptr, d.in_pipe,
                    SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  }
  const uint8_t* p = d.buf.get() + d.head;
  return d.to_is_socket ? ::send(d.to, p, d.tail - d.head, MSG_NOSIGNAL)
                        : ::write(d.to, p, d.tail - d.head);
}

void Relay::WroteOut(Direction& d, size_t n) {
  if (d.pipe_r) {
    d.in_pipe -= n;
  } else if ((d.head += n) == d.tail) {
    d.head = d.tail = 0;
  }
}

ssize_t Relay::ReadIn(Direction& d) {
  if (d.pipe_r) {
    ssize_t n = ::splice(d.from, nullptr, d.pipe_w.get(), nullptr, buffer_size_,
                         SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) d.in_pipe = static_cast<size_t>(n);
    return n;
  }
  if (!d.buf) d.buf = std::make_unique<uint8_t[]>(buffer_size_);
  if (d.from_is_seqpacket) {
    // One message per read; MSG_TRUNC gives its real size, so a message longer than the
    // buffer is an error instead of silently cut short.
    ssize_t n = ::recv(d.from, d.buf.get(), buffer_size_, MSG_TRUNC);
    if (n > static_cast<ssize_t>(buffer_size_)) {
      errno = EMSGSIZE;
      return -1;
    }
    if (n > 0) d.tail = static_cast<size_t>(n);
    return n;
  }
  ssize_t n = ::read(d.from, d.buf.get(), buffer_size_);
  if (n > 0) d.tail = static_cast<size_t>(n);
  return n;
}

Status Relay::Step(Direction& d, bool* yield) {
  uint64_t moved = 0;
  while (!d.done) {
    if (Buffered(d) > 0) {
      ssize_t n = WriteOut(d);
      if (n > 0) {
        WroteOut(d, static_cast<size_t>(n));
        d.bytes += static_cast<uint64_t>(n);
        moved += static_cast<uint64_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        d.wait = Direction::Wait::kOut;
        return OkStatus();
      }
      return ErrnoError("write to {}", d.to_name);
    }
    if (d.eof) {
      // Everything the source sent is out: pass the EOF on, keep the other direction.
      if (d.to_is_socket && ::shutdown(d.to, SHUT_WR) != 0 && errno != ENOTCONN) {
        return ErrnoError("shutdown of {}", d.to_name);
      }
      d.done = true;
      d.wait = Direction::Wait::kNone;
      return OkStatus();
    }
    if (moved >= kTurnBytes) {
      *yield = true;
      d.wait = Direction::Wait::kNone;
      return OkStatus();
    }
    ssize_t n = ReadIn(d);
    if (n > 0) continue;
    if (n == 0) {
      d.eof = true;
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      d.wait = Direction::Wait::kIn;
      return OkStatus();
    }
    if (errno == EINVAL && d.pipe_r) {
      // This socket type cannot splice: plain reads and writes from now on.
      d.pipe_r.Reset();
      d.pipe_w.Reset();
      continue;
    }
    return ErrnoError("read from {}", d.from_name);
  }
  return OkStatus();
}

void Relay::Pump() {
  if (finished_) return;
  bool yield = false;
  for (Direction& d : dirs_) {
    Status st = Step(d, &yield);
    if (!st.ok()) return Finish(std::move(st));
  }
  if (dirs_[0].done && dirs_[1].done) return Finish(OkStatus());
  UpdateInterest();
  if (yield && !yield_scheduled_) {
    yield_scheduled_ = true;
    auto alive = alive_;
    loop_->Defer([this, alive] {
      if (!*alive) return;
      yield_scheduled_ = false;
      Pump();
    });
  }
}

void Relay::UpdateInterest() {
  for (Watch& w : watches_) {
    uint32_t events = 0;
    for (const Direction& d : dirs_) {
      if (d.done) continue;
      if (d.from == w.fd && d.wait == Direction::Wait::kIn) events |= EPOLLIN;
      if (d.to == w.fd && d.wait == Direction::Wait::kOut) events |= EPOLLOUT;
    }
    if (!w.pollable || events == w.events) continue;
    if (events == 0) {
      // Unregistered rather than registered with no events: epoll reports EPOLLHUP and
      // EPOLLERR regardless, which would spin on a socket whose directions are both idle.
      if (w.added) loop_->Remove(w.fd);
      w.added = false;
    } else if (w.added) {
      (void)loop_->Modify(w.fd, events);
    } else {
      Status st = loop_->Add(w.fd, events, [this](uint32_t) { Pump(); });
      if (!st.ok()) {
        // A regular file or /dev/null: always ready (reads and writes never wait on it).
        w.pollable = false;
        continue;
      }
      w.added = true;
    }
    w.events = events;
  }
}

void Relay::Finish(Status status) {
  if (finished_) return;
  finished_ = true;
  for (Watch& w : watches_) {
    if (w.added) loop_->Remove(w.fd);
    w.added = false;
  }
  auto alive = alive_;
  RelayStats stats = this->stats();
  auto done = std::move(on_done_);
  loop_->Defer([alive, stats, status = std::move(status), done = std::move(done)] {
    if (*alive && done) done(stats, status);
  });
}

}  // namespace vsockd::vsockcat
