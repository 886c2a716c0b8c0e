#include "daemon/readiness.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "base/fd.h"
#include "base/unix_socket.h"

namespace vsockd::daemon {

Status SignalReadyFd(int fd) {
  if (fd < 0) return OkStatus();
  static constexpr char kLine[] = "READY\n";
  size_t off = 0;
  Status st = OkStatus();
  while (off < sizeof kLine - 1) {
    ssize_t n = ::write(fd, kLine + off, sizeof kLine - 1 - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      st = ErrnoError("--ready-fd {}: write", fd);
      break;
    }
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  return st;
}

Status NotifySystemd(const std::string& state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') return OkStatus();
  if (path[0] != '/' && path[0] != '@') {
    return MakeError(EINVAL, "NOTIFY_SOCKET '{}' is not a socket path or @abstract name", path);
  }
  sockaddr_un addr;
  auto addr_len = MakeUnixAddress(path, &addr);  // "@name": abstract, as systemd sets it
  if (!addr_len.ok()) return MakeError(EINVAL, "NOTIFY_SOCKET: {}", addr_len.error().context);
  Fd s(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) return ErrnoError("NOTIFY_SOCKET: socket");
  std::string msg = state + "\nMAINPID=" + std::to_string(::getpid());
  ssize_t n;
  do {
    n = ::sendto(s.get(), msg.data(), msg.size(), MSG_NOSIGNAL,
                 reinterpret_cast<const sockaddr*>(&addr), *addr_len);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoError("NOTIFY_SOCKET {}: send", path);
  return OkStatus();
}

}  // namespace vsockd::daemon
