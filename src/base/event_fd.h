// EventFd: an eventfd(2) used for virtqueue kicks and calls, and for cross-thread wakeups.
//
// Callers: vhost_user (kick/call fds from the frontend), vguest (its own kick/call fds).
// Threading: Signal() may be called from any thread.
#pragma once

#include "base/fd.h"
#include "base/result.h"

namespace vsockd {

class EventFd {
 public:
  static Result<EventFd> Create(bool nonblocking = true);
  explicit EventFd(Fd fd) : fd_(std::move(fd)) {}

  // Adds 1 to the counter (wakes a reader). Errors are ignored: a full counter still wakes.
  void Signal() const;
  // Reads and clears the counter; returns false if it was already zero (non-blocking fd).
  bool Drain() const;

  int get() const { return fd_.get(); }
  Fd& fd() { return fd_; }

 private:
  Fd fd_;
};

// Signal/Drain on a raw eventfd someone else owns (a frontend-supplied call fd).
void SignalEventFd(int fd);
bool DrainEventFd(int fd);

}  // namespace vsockd
