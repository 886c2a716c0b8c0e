#include "base/event_fd.h"

#include <sys/eventfd.h>

namespace vsockd {

Result<EventFd> EventFd::Create(bool nonblocking) {
  int fd = ::eventfd(0, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0));
  if (fd < 0) return ErrnoError("eventfd");
  return EventFd(Fd(fd));
}

void EventFd::Signal() const { SignalEventFd(fd_.get()); }
bool EventFd::Drain() const { return DrainEventFd(fd_.get()); }

void SignalEventFd(int fd) {
  uint64_t one = 1;
  ssize_t r;
  do {
    r = ::write(fd, &one, sizeof one);
  } while (r < 0 && errno == EINTR);
}

bool DrainEventFd(int fd) {
  uint64_t value = 0;
  ssize_t r;
  do {
    r = ::read(fd, &value, sizeof value);
  } while (r < 0 && errno == EINTR);
  return r == sizeof value && value != 0;
}

}  // namespace vsockd
