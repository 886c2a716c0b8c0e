// vsock_probe: an AF_VSOCK program written the way C programs use vsock, to check the
// LD_PRELOAD shim (libvsock_preload.so) beyond what the seed Python programs touch.
//
//   vsock_probe server PORT    host listener: bind/listen checks, then accepts one guest
//                              connection (accept4 flags, addresses), prints what it reads
//                              ("GOT <text>"), answers "bye" and exits.
//   vsock_probe fake CID       host client against a fake vsockd this probe plays itself on
//                              "$VSOCKD_RUN_DIR/cid_CID": the non-blocking handshake finished
//                              by the first recv, an ERR reply, SO_VM_SOCKETS_CONNECT_TIMEOUT.
//   vsock_probe client CID PORT DEAD_PORT
//                              host client: non-blocking connect with poll() to guest CID:PORT
//                              (retried until the guest listens), addresses, data both ways;
//                              then connects to DEAD_PORT (nobody listens) blocking and
//                              non-blocking, and to a CID with no VM.
//
// Prints "ok <check>" / "FAIL <check>: ..." lines; exit 0 only when every check passed.
// It is only ever run under no_vsock_guard with the shim preloaded: without the shim its
// socket(AF_VSOCK) calls fail (EACCES from the guard) and nothing is created.
// Callers: tests/integration/shim_test.cc. Threading: single-threaded.
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

int g_failures = 0;

void Check(bool ok, const char* what, const std::string& detail = "") {
  if (ok) {
    std::printf("ok %s\n", what);
  } else {
    ++g_failures;
    std::printf("FAIL %s: %s\n", what, detail.c_str());
  }
  std::fflush(stdout);
}

std::string Errno(int e) { return std::string(strerrorname_np(e) ? strerrorname_np(e) : "?"); }

sockaddr_vm Vm(uint32_t cid, uint32_t port) {
  sockaddr_vm a{};
  a.svm_family = AF_VSOCK;
  a.svm_cid = cid;
  a.svm_port = port;
  return a;
}

int VsockSocket(int flags = 0) { return ::socket(AF_VSOCK, SOCK_STREAM | flags, 0); }

bool Name(int fd, bool peer, sockaddr_vm* out) {
  socklen_t len = sizeof *out;
  int rc = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(out), &len)
                : ::getsockname(fd, reinterpret_cast<sockaddr*>(out), &len);
  return rc == 0 && len == sizeof *out && out->svm_family == AF_VSOCK;
}

std::string Show(const sockaddr_vm& a) {
  return "{cid " + std::to_string(a.svm_cid) + ", port " + std::to_string(a.svm_port) + "}";
}

// Reads until EOF (polling a non-blocking fd).
std::string ReadAll(int fd) {
  std::string out;
  char buf[512];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      return out;
    } else if (errno == EAGAIN) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 10000) <= 0) return out + "<timeout>";
    } else if (errno != EINTR) {
      return out + "<" + Errno(errno) + ">";
    }
  }
}

bool WriteAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 10000);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

int Server(uint32_t port) {
  // Types and families the shim does not serve.
  errno = 0;
  Check(::socket(AF_VSOCK, SOCK_DGRAM, 0) < 0 && errno == ESOCKTNOSUPPORT, "dgram unsupported",
        Errno(errno));
  int sv[2];
  errno = 0;
  Check(::socketpair(AF_VSOCK, SOCK_STREAM, 0, sv) < 0 && errno == EOPNOTSUPP,
        "socketpair EOPNOTSUPP", Errno(errno));

  // VMADDR_PORT_ANY picks a free port >= 1024.
  int any = VsockSocket(SOCK_CLOEXEC);
  sockaddr_vm a = Vm(VMADDR_CID_ANY, VMADDR_PORT_ANY);
  Check(any >= 0 && ::bind(any, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "bind port any",
        Errno(errno));
  sockaddr_vm got{};
  Check(Name(any, false, &got) && got.svm_port >= 1024 && got.svm_port != VMADDR_PORT_ANY &&
            got.svm_cid == VMADDR_CID_ANY,
        "getsockname after bind any", Show(got));
  errno = 0;
  Check(::listen(VsockSocket(), 1) < 0 && errno == EINVAL, "listen unbound EINVAL", Errno(errno));
  ::close(any);

  // A stale socket file at the port is replaced.
  const char* dir = std::getenv("VSOCKD_RUN_DIR");
  std::string stale_path = std::string(dir ? dir : "") + "/host_" + std::to_string(port + 1);
  {
    int u = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un ua{};
    ua.sun_family = AF_UNIX;
    std::snprintf(ua.sun_path, sizeof ua.sun_path, "%s", stale_path.c_str());
    Check(::bind(u, reinterpret_cast<sockaddr*>(&ua), sizeof ua) == 0, "stale socket file");
    ::close(u);  // the file stays, nobody holds it
  }
  int stale = VsockSocket();
  a = Vm(VMADDR_CID_HOST, port + 1);
  Check(::bind(stale, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "bind over a stale file",
        Errno(errno));
  ::close(stale);
  Check(::access(stale_path.c_str(), F_OK) != 0, "close removes the listener file");

  // The real listener, and EADDRINUSE for a second one.
  int lfd = VsockSocket(SOCK_CLOEXEC);
  a = Vm(VMADDR_CID_HOST, port);
  Check(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "bind", Errno(errno));
  Check(::listen(lfd, 16) == 0, "listen", Errno(errno));
  int dup = VsockSocket();
  errno = 0;
  Check(::bind(dup, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 && errno == EADDRINUSE,
        "second bind EADDRINUSE", Errno(errno));
  ::close(dup);
  Check(Name(lfd, false, &got) && got.svm_cid == VMADDR_CID_HOST && got.svm_port == port,
        "listener getsockname", Show(got));
  int domain = 0;
  socklen_t dlen = sizeof domain;
  Check(::getsockopt(lfd, SOL_SOCKET, SO_DOMAIN, &domain, &dlen) == 0 && domain == AF_VSOCK,
        "SO_DOMAIN", std::to_string(domain));
  uint64_t size = 65536, back = 0;
  socklen_t slen = sizeof back;
  Check(::setsockopt(lfd, AF_VSOCK, SO_VM_SOCKETS_BUFFER_SIZE, &size, sizeof size) == 0 &&
            ::getsockopt(lfd, AF_VSOCK, SO_VM_SOCKETS_BUFFER_SIZE, &back, &slen) == 0 &&
            back == 65536,
        "SO_VM_SOCKETS_BUFFER_SIZE", std::to_string(back));
  std::printf("READY\n");
  std::fflush(stdout);

  sockaddr_vm peer{};
  socklen_t plen = sizeof peer;
  int c = ::accept4(lfd, reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
  Check(c >= 0, "accept4", Errno(errno));
  if (c < 0) return 1;
  Check(plen == sizeof peer && peer.svm_family == AF_VSOCK && peer.svm_cid >= 3 &&
            peer.svm_port != VMADDR_PORT_ANY,
        "accept4 peer address", Show(peer));
  std::printf("PEER %u %u\n", peer.svm_cid, peer.svm_port);
  Check((::fcntl(c, F_GETFL) & O_NONBLOCK) != 0, "accept4 SOCK_NONBLOCK");
  Check((::fcntl(c, F_GETFD) & FD_CLOEXEC) != 0, "accept4 SOCK_CLOEXEC");
  sockaddr_vm p2{}, local{};
  Check(Name(c, true, &p2) && p2.svm_cid == peer.svm_cid && p2.svm_port == peer.svm_port,
        "accepted getpeername", Show(p2));
  Check(Name(c, false, &local) && local.svm_cid == VMADDR_CID_HOST && local.svm_port == port,
        "accepted getsockname", Show(local));
  std::string data = ReadAll(c);
  std::printf("GOT %s\n", data.c_str());
  Check(WriteAll(c, "bye\n"), "write back");
  ::close(c);
  ::close(lfd);
  std::string path = std::string(dir ? dir : "") + "/host_" + std::to_string(port);
  Check(::access(path.c_str(), F_OK) != 0, "listener file removed on close");
  return g_failures == 0 ? 0 : 1;
}

// Non-blocking connect to cid:port; returns the connected fd or -1 after the last error.
int ConnectNonBlocking(uint32_t cid, uint32_t port, int* last_error) {
  int fd = VsockSocket();
  // O_NONBLOCK through fcntl, not SOCK_NONBLOCK: the shim must read the fd's real flags.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  sockaddr_vm a = Vm(cid, port);
  for (int attempt = 0; attempt < 500; ++attempt) {
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    if (rc == 0) return fd;
    if (errno != EINPROGRESS) {
      *last_error = errno;
      ::close(fd);
      return -1;
    }
    // A second connect while the handshake runs.
    int again = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    int again_errno = errno;
    if (attempt == 0) {
      Check(again < 0 &&
                (again_errno == EALREADY || again_errno == EISCONN || again_errno == ECONNRESET),
            "connect again while pending", Errno(again_errno));
    }
    if (again < 0 && again_errno == EISCONN) return fd;
    if (again < 0 && again_errno == ECONNRESET) {  // the guest is not listening yet
      *last_error = again_errno;
      ::usleep(20000);
      continue;  // the same fd: a failed vsock connect may be retried
    }
    pollfd p{fd, POLLOUT, 0};
    if (attempt == 0) Check(::poll(&p, 1, 10000) == 1 && (p.revents & POLLOUT), "poll POLLOUT");
    p = {fd, POLLIN, 0};
    ::poll(&p, 1, 10000);  // the reply line
    int err = -1;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err == 0) return fd;
    *last_error = err;
    if (err != ECONNRESET) break;
    ::usleep(20000);
  }
  ::close(fd);
  return -1;
}

void DeadPortChecks(uint32_t cid, uint32_t port, uint32_t dead_port) {
  sockaddr_vm peer{};
  // Nobody listens on dead_port: ECONNRESET, like Linux AF_VSOCK.
  int b = VsockSocket();
  sockaddr_vm a = Vm(cid, dead_port);
  errno = 0;
  Check(::connect(b, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 && errno == ECONNRESET,
        "blocking connect to a dead port ECONNRESET", Errno(errno));
  errno = 0;
  Check(::getpeername(b, reinterpret_cast<sockaddr*>(&peer), nullptr) < 0 && errno == ENOTCONN,
        "getpeername after failed connect ENOTCONN", Errno(errno));
  // ... and again on the same socket.
  errno = 0;
  Check(::connect(b, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 && errno == ECONNRESET,
        "retried connect ECONNRESET", Errno(errno));
  ::close(b);

  int nb = VsockSocket(SOCK_NONBLOCK);
  errno = 0;
  Check(::connect(nb, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 && errno == EINPROGRESS,
        "non-blocking connect EINPROGRESS", Errno(errno));
  pollfd p{nb, POLLIN, 0};
  Check(::poll(&p, 1, 10000) == 1, "poll POLLIN for the refusal");
  char c;
  errno = 0;
  Check(::recv(nb, &c, 1, 0) < 0 && errno == ECONNRESET, "first recv ECONNRESET", Errno(errno));
  ::close(nb);

  // No VM with that CID.
  int n = VsockSocket();
  a = Vm(cid + 1000, port);
  errno = 0;
  Check(::connect(n, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 && errno == ENODEV,
        "connect to a CID without VM ENODEV", Errno(errno));
  ::close(n);
}

int Client(uint32_t cid, uint32_t port, uint32_t dead_port) {
  int err = 0;
  int fd = ConnectNonBlocking(cid, port, &err);
  Check(fd >= 0, "non-blocking connect", Errno(err));
  if (fd < 0) return 1;
  sockaddr_vm peer{}, local{};
  Check(Name(fd, true, &peer) && peer.svm_cid == cid && peer.svm_port == port, "client getpeername",
        Show(peer));
  Check(Name(fd, false, &local) && local.svm_cid == VMADDR_CID_HOST &&
            local.svm_port != VMADDR_PORT_ANY,
        "client getsockname", Show(local));
  // The failure cases run while this connection keeps the guest attached.
  DeadPortChecks(cid, port, dead_port);
  Check(WriteAll(fd, "hello from the probe\n"), "client write");
  ::shutdown(fd, SHUT_WR);
  std::string data = ReadAll(fd);
  std::printf("GOT %s\n", data.c_str());
  ::close(fd);
  return g_failures == 0 ? 0 : 1;
}

// A plain AF_UNIX listener standing in for vsockd's DIR/cid_<cid>.
int FakeDaemon(uint32_t cid) {
  const char* dir = std::getenv("VSOCKD_RUN_DIR");
  std::string path = std::string(dir ? dir : "") + "/cid_" + std::to_string(cid);
  int l = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un ua{};
  ua.sun_family = AF_UNIX;
  std::snprintf(ua.sun_path, sizeof ua.sun_path, "%s", path.c_str());
  ::unlink(path.c_str());
  if (::bind(l, reinterpret_cast<sockaddr*>(&ua), sizeof ua) != 0 || ::listen(l, 8) != 0) {
    Check(false, "fake vsockd listener", Errno(errno));
    return -1;
  }
  return l;
}

std::string ReadCommand(int fd) {
  std::string line;
  char c;
  while (::read(fd, &c, 1) == 1 && c != '\n') line.push_back(c);
  return line;
}

int Fake(uint32_t cid) {
  int l = FakeDaemon(cid);
  if (l < 0) return 1;
  sockaddr_vm a = Vm(cid, 4242);

  // Success, finished by the first recv.
  int s = VsockSocket(SOCK_NONBLOCK);
  errno = 0;
  Check(::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 && errno == EINPROGRESS,
        "fake: EINPROGRESS", Errno(errno));
  int err = -1;
  socklen_t len = sizeof err;
  Check(::getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0,
        "fake: SO_ERROR 0 before the reply", std::to_string(err));
  char buf[64];
  errno = 0;
  Check(::recv(s, buf, sizeof buf, 0) < 0 && errno == EAGAIN, "fake: recv EAGAIN while pending",
        Errno(errno));
  int d = ::accept(l, nullptr, nullptr);
  Check(ReadCommand(d) == "CONNECT 4242", "fake: CONNECT line");
  WriteAll(d, "OK 1234\nhello");
  pollfd p{s, POLLIN, 0};
  Check(::poll(&p, 1, 10000) == 1, "fake: POLLIN");
  ssize_t n = ::recv(s, buf, sizeof buf, 0);
  Check(n == 5 && std::memcmp(buf, "hello", 5) == 0, "fake: first recv skips the OK line",
        n < 0 ? Errno(errno) : std::string(buf, static_cast<size_t>(n)));
  sockaddr_vm local{}, peer{};
  Check(Name(s, false, &local) && local.svm_port == 1234 && local.svm_cid == VMADDR_CID_HOST,
        "fake: local port from OK", Show(local));
  Check(Name(s, true, &peer) && peer.svm_cid == cid && peer.svm_port == 4242, "fake: peer",
        Show(peer));
  Check(WriteAll(s, "x") && ::read(d, buf, 1) == 1 && buf[0] == 'x', "fake: data to the fake");
  ::close(d);
  ::close(s);

  // An ERR reply after EINPROGRESS: the first read reports it.
  s = VsockSocket(SOCK_NONBLOCK);
  int rc = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  Check(rc < 0 && errno == EINPROGRESS, "fake ERR: connect in progress");
  d = ::accept(l, nullptr, nullptr);
  ReadCommand(d);
  WriteAll(d, "ERR guest did not answer on port 4242 in time\n");
  ::close(d);
  p = {s, POLLIN, 0};
  ::poll(&p, 1, 10000);
  errno = 0;
  Check(::read(s, buf, sizeof buf) < 0 && errno == ETIMEDOUT, "fake: ERR timeout -> ETIMEDOUT",
        Errno(errno));
  ::close(s);

  // Blocking connect bounded by SO_VM_SOCKETS_CONNECT_TIMEOUT (+1 s for vsockd's own answer).
  s = VsockSocket();
  timeval tv{0, 100000};
  Check(::setsockopt(s, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof tv) == 0,
        "fake: set connect timeout", Errno(errno));
  errno = 0;
  Check(::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 && errno == ETIMEDOUT,
        "fake: silent vsockd -> ETIMEDOUT", Errno(errno));
  ::close(s);
  ::close(l);
  return g_failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "server") == 0) {
    return Server(static_cast<uint32_t>(std::strtoul(argv[2], nullptr, 10)));
  }
  if (argc == 3 && std::strcmp(argv[1], "fake") == 0) {
    return Fake(static_cast<uint32_t>(std::strtoul(argv[2], nullptr, 10)));
  }
  if (argc == 5 && std::strcmp(argv[1], "client") == 0) {
    return Client(static_cast<uint32_t>(std::strtoul(argv[2], nullptr, 10)),
                  static_cast<uint32_t>(std::strtoul(argv[3], nullptr, 10)),
                  static_cast<uint32_t>(std::strtoul(argv[4], nullptr, 10)));
  }
  std::fprintf(stderr, "usage: vsock_probe server PORT | fake CID | client CID PORT DEAD_PORT\n");
  return 2;
}
