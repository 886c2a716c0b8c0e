#include "daemon/inherited_sockets.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "base/unix_socket.h"

namespace vsockd::daemon {
namespace {

// Decimal digits only, within [0, max]; false otherwise.
bool ParseNumber(std::string_view text, long long max, long long* value) {
  if (text.empty() || text.size() > 19) return false;
  long long v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
    if (v > max) return false;
  }
  *value = v;
  return true;
}

std::vector<std::string> SplitNames(std::string_view text) {
  std::vector<std::string> names;
  size_t start = 0;
  for (;;) {
    size_t end = text.find(':', start);
    names.emplace_back(text.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return names;
}

}  // namespace

Result<SocketSpec> ParseSocketSpec(std::string_view text) {
  SocketSpec spec;
  if (text.empty()) return MakeError(EINVAL, "socket: empty path");
  if (text.starts_with("fd:")) {
    long long fd = 0;
    if (!ParseNumber(text.substr(3), INT_MAX, &fd)) {
      return MakeError(EINVAL,
                       "socket '{}': fd:N takes a descriptor number (a path starting with "
                       "'fd:' is written './fd:...')",
                       text);
    }
    spec.kind = SocketSpec::Kind::kFd;
    spec.fd = static_cast<int>(fd);
    return spec;
  }
  if (text.starts_with("systemd:")) {
    std::string_view name = text.substr(8);
    // FileDescriptorName=: at most 255 printable ASCII characters, no ':' (the separator of
    // LISTEN_FDNAMES).
    bool ok = !name.empty() && name.size() <= 255;
    for (char c : name) ok = ok && c > ' ' && c < 127 && c != ':';
    if (!ok) {
      return MakeError(EINVAL,
                       "socket '{}': systemd:NAME takes a socket unit's FileDescriptorName= "
                       "(1..255 printable characters, no ':')",
                       text);
    }
    spec.kind = SocketSpec::Kind::kSystemdName;
    spec.name = std::string(name);
    return spec;
  }
  spec.path = std::string(text);
  return spec;
}

Status CheckListeningUnixStream(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoError("descriptor {}", fd);
  if (!S_ISSOCK(st.st_mode)) return MakeError(ENOTSOCK, "descriptor {} is not a socket", fd);
  int value = 0;
  socklen_t len = sizeof value;
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &value, &len) != 0) {
    return ErrnoError("descriptor {}: SO_DOMAIN", fd);
  }
  if (value != AF_UNIX) {
    return MakeError(EAFNOSUPPORT, "descriptor {} is not an AF_UNIX socket (family {})", fd, value);
  }
  len = sizeof value;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &len) != 0) {
    return ErrnoError("descriptor {}: SO_TYPE", fd);
  }
  if (value != SOCK_STREAM) {
    return MakeError(EPROTOTYPE,
                     "descriptor {} is not a stream socket (vhost-user needs SOCK_STREAM: "
                     "ListenStream=)",
                     fd);
  }
  len = sizeof value;
  if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &value, &len) != 0) {
    return ErrnoError("descriptor {}: SO_ACCEPTCONN", fd);
  }
  if (value == 0) {
    return MakeError(EINVAL,
                     "descriptor {} is not listening (a socket unit with Accept=yes passes "
                     "connections; vsockd needs Accept=no)",
                     fd);
  }
  return OkStatus();
}

Result<InheritedSockets> InheritedSockets::FromEnvironment() {
  auto get = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v != nullptr ? std::string(v) : std::string();
  };
  const std::string pid = get("LISTEN_PID");
  const std::string fds = get("LISTEN_FDS");
  const std::string names = get("LISTEN_FDNAMES");
  // Not for our children, whatever happens next.
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
  return FromValues(pid, fds, names, ::getpid());
}

Result<InheritedSockets> InheritedSockets::FromValues(std::string_view listen_pid,
                                                      std::string_view listen_fds,
                                                      std::string_view listen_fdnames, pid_t self,
                                                      int first_fd) {
  InheritedSockets pool;
  if (listen_pid.empty()) return pool;
  long long pid = 0;
  if (!ParseNumber(listen_pid, INT_MAX, &pid)) {
    return MakeError(EINVAL, "LISTEN_PID '{}' is not a process id", listen_pid);
  }
  if (pid != self) return pool;  // meant for another process (a parent's leftover)
  long long count = 0;
  if (!ParseNumber(listen_fds, 4096, &count)) {
    return MakeError(EINVAL, "LISTEN_FDS '{}' is not a number of descriptors (0..4096)",
                     listen_fds);
  }
  std::vector<std::string> names;
  if (!listen_fdnames.empty()) {
    names = SplitNames(listen_fdnames);
    if (names.size() != static_cast<size_t>(count)) {
      return MakeError(EINVAL, "LISTEN_FDNAMES has {} names for LISTEN_FDS={} descriptors",
                       names.size(), count);
    }
  }
  for (int i = 0; i < count; ++i) {
    const int fd = first_fd + i;
    if (::fcntl(fd, F_GETFD) < 0) {
      return MakeError(EBADF, "LISTEN_FDS={}: descriptor {} is not open", count, fd);
    }
    Socket s;
    s.fd = Fd(fd);
    VSOCKD_RETURN_IF_ERROR(SetCloseOnExec(fd));
    s.name = names.empty() ? std::string() : names[static_cast<size_t>(i)];
    s.address = UnixSocketName(fd);
    s.from_systemd = true;
    pool.sockets_.push_back(std::move(s));
  }
  return pool;
}

Result<Fd> InheritedSockets::Hand(Socket* socket) {
  VSOCKD_RETURN_IF_ERROR(CheckListeningUnixStream(socket->fd.get()));
  Fd copy(::fcntl(socket->fd.get(), F_DUPFD_CLOEXEC, 0));
  if (!copy) return ErrnoError("dup of descriptor {}", socket->fd.get());
  socket->used = true;
  return copy;
}

Result<Fd> InheritedSockets::Find(const SocketSpec& spec) {
  switch (spec.kind) {
    case SocketSpec::Kind::kPath:
      for (Socket& s : sockets_) {
        if (s.from_systemd && !s.address.empty() && s.address == spec.path) return Hand(&s);
      }
      return Fd();
    case SocketSpec::Kind::kSystemdName: {
      Socket* found = nullptr;
      size_t matches = 0;
      for (Socket& s : sockets_) {
        if (s.from_systemd && s.name == spec.name) {
          found = &s;
          ++matches;
        }
      }
      if (matches == 0) {
        std::string passed;
        for (const Socket& s : sockets_) {
          if (!s.from_systemd) continue;
          passed += fmt::format("{}'{}'", passed.empty() ? "" : ", ", s.name);
        }
        return MakeError(ENOENT,
                         "socket 'systemd:{}': systemd passed no socket of that name (passed: "
                         "{}); it is the socket unit's FileDescriptorName=",
                         spec.name, passed.empty() ? "none" : passed);
      }
      if (matches > 1) {
        return MakeError(EEXIST,
                         "socket 'systemd:{}': systemd passed {} sockets with that name; give "
                         "each its own FileDescriptorName=, or name the VM's socket by path",
                         spec.name, matches);
      }
      return Hand(found);
    }
    case SocketSpec::Kind::kFd: {
      for (Socket& s : sockets_) {
        if (s.fd.get() == spec.fd) return Hand(&s);
      }
      if (::fcntl(spec.fd, F_GETFD) < 0) {
        return MakeError(EBADF, "socket 'fd:{}': descriptor {} is not open", spec.fd, spec.fd);
      }
      // Checked before the pool owns it: a wrong descriptor is not closed behind the caller.
      if (Status s = CheckListeningUnixStream(spec.fd); !s.ok()) {
        return MakeError(s.error().code, "socket 'fd:{}': {}", spec.fd, s.error().context);
      }
      VSOCKD_RETURN_IF_ERROR(SetCloseOnExec(spec.fd));
      Socket s;
      s.fd = Fd(spec.fd);
      s.address = UnixSocketName(spec.fd);
      sockets_.push_back(std::move(s));
      return Hand(&sockets_.back());
    }
  }
  return Fd();
}

std::vector<std::string> InheritedSockets::Unused() const {
  std::vector<std::string> unused;
  for (const Socket& s : sockets_) {
    if (!s.from_systemd || s.used) continue;
    unused.push_back(fmt::format("'{}' ({})", s.name.empty() ? "unnamed" : s.name,
                                 s.address.empty() ? "no address" : s.address));
  }
  return unused;
}

}  // namespace vsockd::daemon
