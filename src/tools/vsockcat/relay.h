// Relay: copies bytes both ways between two endpoints (two sockets, or a socket and
// stdin/stdout), event driven on an EventLoop, with half-close and back-pressure.
//
// Each direction has one bounded buffer (socket -> socket: a pipe, filled and drained with
// splice(2)): it reads from its source only when the buffer is empty and writes it out
// before reading more, so a side whose peer cannot take more is simply not read (its socket
// buffer fills and TCP / vsock credit push back to the sender).
// EOF on a source -> once its buffer is written, shutdown(SHUT_WR) on the destination (a
// socket); the other direction goes on until it ends too. A read or write error ends the
// whole relay. Fds that epoll refuses (regular files, /dev/null) count as always ready.
//
// Callers: vsockcat (main.cc) and its tests. Threading: the EventLoop's thread only. The
// Relay never closes fds (the owner does), and never calls on_done from inside Start() or
// a destructor; on_done runs from a deferred callback, so the owner may destroy the Relay
// there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"

namespace vsockd::vsockcat {

struct RelaySide {
  int in_fd = -1;            // read from here (a socket: the same as out_fd)
  int out_fd = -1;           // write what the other side sends here
  std::string name;          // for error messages ("stdin/stdout", "tcp:1.2.3.4:5")
  bool input_ended = false;  // the input already hit EOF (stdin of an earlier relay)
};

struct RelayStats {
  uint64_t a_to_b = 0;  // bytes written to b
  uint64_t b_to_a = 0;
  bool a_input_eof = false;  // a's input reached EOF (so stdin is used up)
};

class Relay {
 public:
  using Done = std::function<void(const RelayStats&, const Status&)>;
  static constexpr size_t kDefaultBufferSize = 256 * 1024;

  Relay(EventLoop* loop, const RelaySide& a, const RelaySide& b, Done on_done,
        size_t buffer_size = kDefaultBufferSize);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Socket -> socket directions move data with splice(2) through a pipe (no copy through
  // user space) unless turned off before Start(); other directions, or a kernel that
  // refuses, use read/write with the buffer. A splice to a closed socket may raise SIGPIPE
  // (it has no MSG_NOSIGNAL): processes that splice ignore SIGPIPE, as vsockcat does.
  void set_use_splice(bool on) { use_splice_ = on; }
  // Sets the fds non-blocking (the owner restores stdin/stdout flags if it cares) and starts.
  void Start();
  RelayStats stats() const;

 private:
  struct Direction {
    int from = -1, to = -1;
    bool to_is_socket = false;
    bool from_is_seqpacket = false;  // one message per read (checked for truncation)
    std::string from_name, to_name;
    std::unique_ptr<uint8_t[]> buf;
    size_t head = 0, tail = 0;
    Fd pipe_r, pipe_w;  // splice mode: the pipe holds what was read and not yet written
    size_t in_pipe = 0;
    bool eof = false;   // the source said EOF
    bool done = false;  // EOF passed on: nothing more to do
    enum class Wait { kNone, kIn, kOut } wait = Wait::kNone;
    uint64_t bytes = 0;
  };
  struct Watch {
    int fd;
    bool pollable = true;
    bool added = false;
    uint32_t events = 0;
  };

  // Moves as much as it can; Status error on a read/write error. Sets *yield when it
  // stopped only to give other connections a turn.
  Status Step(Direction& d, bool* yield);
  static size_t Buffered(const Direction& d);
  static ssize_t WriteOut(Direction& d);  // one write of what is buffered; -1 + errno
  static void WroteOut(Direction& d, size_t n);
  ssize_t ReadIn(Direction& d);  // one read into the empty buffer; -1 + errno
  void Pump();
  void UpdateInterest();
  void Finish(Status status);

  EventLoop* loop_;
  Done on_done_;
  size_t buffer_size_;
  Direction dirs_[2];  // 0: a -> b, 1: b -> a
  std::vector<Watch> watches_;
  bool use_splice_ = true;
  bool started_ = false;
  bool finished_ = false;
  bool yield_scheduled_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace vsockd::vsockcat
