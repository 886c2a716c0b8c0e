#include "base/fd.h"

#include <fcntl.h>

namespace vsockd {

Status SetNonBlocking(int fd, bool on) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return ErrnoError("fcntl(F_GETFL)");
  int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (wanted != flags && ::fcntl(fd, F_SETFL, wanted) < 0) return ErrnoError("fcntl(F_SETFL)");
  return OkStatus();
}

Status SetCloseOnExec(int fd) {
  int flags = ::fcntl(fd, F_GETFD);
  if (flags < 0 || ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) {
    return ErrnoError("fcntl(FD_CLOEXEC)");
  }
  return OkStatus();
}

Status WriteAll(int fd, const void* buf, size_t len) {
  const auto* p = static_cast<const uint8_t*>(buf);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write");
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return OkStatus();
}

Status ReadExact(int fd, void* buf, size_t len) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len > 0) {
    ssize_t n = ::read(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read");
    }
    if (n == 0) return MakeError(ECONNRESET, "unexpected EOF");
    p += n;
    len -= static_cast<size_t>(n);
  }
  return OkStatus();
}

size_t IovecBytes(const iovec* iov, size_t count) {
  size_t total = 0;
  for (size_t i = 0; i < count; ++i) total += iov[i].iov_len;
  return total;
}

}  // namespace vsockd
