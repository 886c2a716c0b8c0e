// Fd: owning file descriptor, plus small syscall helpers every layer needs.
//
// Callers: everyone. Threading: an Fd is owned by one thread at a time, like any value.
#pragma once

#include <sys/uio.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "base/result.h"

namespace vsockd {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(Fd&& other) noexcept : fd_(other.Release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }

  int Release() { return std::exchange(fd_, -1); }
  void Reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

Status SetNonBlocking(int fd, bool on = true);
Status SetCloseOnExec(int fd);

// Writes all of buf, retrying on EINTR and short writes (blocking fds only).
Status WriteAll(int fd, const void* buf, size_t len);
// Reads exactly len bytes; returns ECONNRESET-coded error "unexpected EOF" on early EOF.
Status ReadExact(int fd, void* buf, size_t len);

// Sums iovec lengths.
size_t IovecBytes(const iovec* iov, size_t count);

}  // namespace vsockd
