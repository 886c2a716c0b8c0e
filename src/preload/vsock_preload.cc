// The AF_VSOCK LD_PRELOAD shim: see vsock_preload.h for the behaviour.
//
// Built without sanitizers (it is loaded into uninstrumented programs) and without vsockd's
// libraries: only libc, libdl and the header-only host/caller_name.h.
#include "preload/vsock_preload.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "host/caller_name.h"

namespace {

// ----------------------------------------------------------------------------- real calls

template <typename F>
F Next(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

// Each wrapper resolves its libc function once (thread-safe static init).
#define REAL(name) static const auto real_##name = Next<decltype(&::name)>(#name)

int RealClose(int fd) {
  REAL(close);
  return real_close(fd);
}
int RealDup3(int oldfd, int newfd, int flags) {
  REAL(dup3);
  return real_dup3(oldfd, newfd, flags);
}
ssize_t RealRecv(int fd, void* buf, size_t len, int flags) {
  REAL(recv);
  return real_recv(fd, buf, len, flags);
}
int RealConnect(int fd, const sockaddr* addr, socklen_t len) {
  REAL(connect);
  return real_connect(fd, addr, len);
}
int RealSocket(int domain, int type, int protocol) {
  REAL(socket);
  return real_socket(domain, type, protocol);
}
int RealBind(int fd, const sockaddr* addr, socklen_t len) {
  REAL(bind);
  return real_bind(fd, addr, len);
}

// ----------------------------------------------------------------------------- fd table

constexpr int kMaxFds = 65536;
constexpr uint8_t kTracked = 1;  // the fd is one of our vsock sockets
constexpr uint8_t kPending = 2;  // non-blocking connect: the "OK" reply is not consumed yet

constexpr uint64_t kDefaultBufferSize = 256 * 1024;
constexpr uint64_t kDefaultBufferMin = 128;
constexpr uint64_t kDefaultBufferMax = 256 * 1024;

enum class State { kUnbound, kBound, kListening, kConnecting, kConnected, kFailed };

struct Entry {
  dev_t dev = 0;  // identity of the AF_UNIX socket behind the fd: detects a reused fd number
  ino_t ino = 0;  // (after close_range, exec'd fd tables, ...)
  std::string run_dir;
  bool seqpacket = false;  // SOCK_SEQPACKET: the ".seqpacket" files, one-message handshake
  State state = State::kUnbound;
  uint32_t local_cid = VMADDR_CID_ANY;
  uint32_t local_port = VMADDR_PORT_ANY;
  uint32_t peer_cid = VMADDR_CID_ANY;
  uint32_t peer_port = VMADDR_PORT_ANY;
  // The listener file we bound, removed on close by the process that created it.
  std::string bound_path;
  dev_t bound_dev = 0;
  ino_t bound_ino = 0;
  pid_t owner = 0;
  // Non-blocking connect: reply bytes consumed so far.
  std::string reply;
  uint64_t buffer_size = kDefaultBufferSize;
  uint64_t buffer_min = kDefaultBufferMin;
  uint64_t buffer_max = kDefaultBufferMax;
  timeval connect_timeout{2, 0};
};

// Never destroyed: close() may still run from other threads or atexit handlers after static
// destructors (a union member is not destroyed by the union's destructor).
struct Slot {
  union {
    std::shared_ptr<Entry> entry;
  };
  constexpr Slot() : entry() {}
  ~Slot() {}
};

std::atomic<uint8_t> g_flags[kMaxFds];
std::mutex g_mu;
Slot g_entries[kMaxFds];  // guarded by g_mu

inline uint8_t Flags(int fd) {
  if (fd < 0 || fd >= kMaxFds) return 0;
  return g_flags[fd].load(std::memory_order_acquire);
}

bool SocketIdentity(int fd, dev_t* dev, ino_t* ino) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return false;
  *dev = st.st_dev;
  *ino = st.st_ino;
  return true;
}

void Track(int fd, std::shared_ptr<Entry> entry) {
  std::lock_guard lock(g_mu);
  g_entries[fd].entry = std::move(entry);
  g_flags[fd].store(kTracked, std::memory_order_release);
}

std::shared_ptr<Entry> Untrack(int fd) {
  if (fd < 0 || fd >= kMaxFds) return nullptr;
  std::lock_guard lock(g_mu);
  g_flags[fd].store(0, std::memory_order_release);
  return std::move(g_entries[fd].entry);
}

// Forgets what we knew about `fd` if the kernel gave the number to a new file.
inline void Forget(int fd) {
  if (Flags(fd) != 0) Untrack(fd);
}

void SetPending(int fd, bool on) {
  std::lock_guard lock(g_mu);
  if (!g_entries[fd].entry) return;
  g_flags[fd].store(on ? (kTracked | kPending) : kTracked, std::memory_order_release);
}

void RemoveBoundFile(const Entry& e) {
  if (e.bound_path.empty() || e.owner != ::getpid()) return;
  struct stat st;
  if (::lstat(e.bound_path.c_str(), &st) == 0 && st.st_dev == e.bound_dev &&
      st.st_ino == e.bound_ino) {
    ::unlink(e.bound_path.c_str());
  }
}

// The entry of a tracked fd that still is the socket we created, else null.
std::shared_ptr<Entry> Find(int fd) {
  if ((Flags(fd) & kTracked) == 0) return nullptr;
  std::shared_ptr<Entry> e;
  {
    std::lock_guard lock(g_mu);
    e = g_entries[fd].entry;
  }
  if (!e) return nullptr;
  dev_t dev;
  ino_t ino;
  if (!SocketIdentity(fd, &dev, &ino) || dev != e->dev || ino != e->ino) {
    Untrack(fd);  // stale: the number now belongs to something else
    return nullptr;
  }
  return e;
}

// ----------------------------------------------------------------------------- helpers

bool RunDir(std::string* out) {
  const char* env = std::getenv("VSOCKD_RUN_DIR");
  if (env != nullptr && env[0] != '\0') {
    *out = env;
  } else if (::geteuid() == 0) {
    *out = "/run/vsockd";
  } else {
    const char* xdg = std::getenv("XDG_RUNTIME_DIR");
    if (xdg == nullptr || xdg[0] == '\0') return false;
    *out = std::string(xdg) + "/vsockd";
  }
  while (out->size() > 1 && out->back() == '/') out->pop_back();
  return true;
}

bool MakeUnixAddr(const std::string& path, sockaddr_un* addr, socklen_t* len) {
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path.size() >= sizeof addr->sun_path) return false;
  std::memcpy(addr->sun_path, path.data(), path.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return true;
}

// vsockd's name suffix for the socket type (src/host/unix_backend.h).
const char* Suffix(const Entry& e) { return e.seqpacket ? ".seqpacket" : ""; }

int Fail(int err) {
  errno = err;
  return -1;
}

// Writes a sockaddr_vm the way the kernel does: truncated to *len, *len set to the full size.
void FillVm(sockaddr* addr, socklen_t* len, uint32_t cid, uint32_t port) {
  if (addr == nullptr || len == nullptr) return;
  sockaddr_vm vm{};
  vm.svm_family = AF_VSOCK;
  vm.svm_cid = cid;
  vm.svm_port = port;
  std::memcpy(addr, &vm, std::min<size_t>(*len, sizeof vm));
  *len = sizeof vm;
}

// Validates a sockaddr_vm argument; returns 0 or an errno.
int ParseVm(const sockaddr* addr, socklen_t len, sockaddr_vm* out) {
  if (addr == nullptr || len < static_cast<socklen_t>(sizeof(sockaddr_vm))) return EINVAL;
  std::memcpy(out, addr, sizeof *out);
  if (out->svm_family != AF_VSOCK) return EAFNOSUPPORT;
  return 0;
}

bool IsNonBlocking(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  return fl >= 0 && (fl & O_NONBLOCK) != 0;
}

// Runs a real AF_UNIX connect in blocking mode: a non-blocking AF_UNIX connect fails with
// EAGAIN when the listener's backlog is full, which vsock callers never expect.
int BlockingUnixConnect(int fd, const std::string& path) {
  sockaddr_un addr;
  socklen_t len;
  if (!MakeUnixAddr(path, &addr, &len)) return ENAMETOOLONG;
  int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0 && (fl & O_NONBLOCK) != 0) ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  int rc;
  do {
    rc = RealConnect(fd, reinterpret_cast<sockaddr*>(&addr), len);
  } while (rc < 0 && errno == EINTR);
  int err = rc < 0 ? errno : 0;
  if (fl >= 0 && (fl & O_NONBLOCK) != 0) ::fcntl(fd, F_SETFL, fl);
  return err;
}

// Is some socket (in this network namespace) bound to `path`? /proc/net/unix lists every
// bound AF_UNIX socket with its path. Unreadable: assume yes (never steal a live name).
bool PathHasLiveSocket(const std::string& path) {
  FILE* f = std::fopen("/proc/net/unix", "re");
  if (f == nullptr) return true;
  char line[512];
  bool found = false;
  while (!found && std::fgets(line, sizeof line, f) != nullptr) {
    size_t n = std::strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    // The path is the 8th field and last: compare the line's tail.
    if (n > path.size() && line[n - path.size() - 1] == ' ' &&
        std::memcmp(line + n - path.size(), path.data(), path.size()) == 0) {
      found = true;
    }
  }
  std::fclose(f);
  return found;
}

// Binds `fd` to the filesystem path `path`, replacing a stale socket file. 0 or an errno.
int BindPath(int fd, const std::string& path) {
  sockaddr_un addr;
  socklen_t len;
  if (!MakeUnixAddr(path, &addr, &len)) return ENAMETOOLONG;
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (RealBind(fd, reinterpret_cast<sockaddr*>(&addr), len) == 0) return 0;
    if (errno != EADDRINUSE) return errno;
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) return EADDRINUSE;
    if (PathHasLiveSocket(path)) return EADDRINUSE;
    ::unlink(path.c_str());  // stale: its socket is gone
  }
  return EADDRINUSE;
}

// Replaces the socket behind `fd` with a fresh unconnected AF_UNIX stream socket (same
// O_NONBLOCK / FD_CLOEXEC), so a failed connect can be retried as with AF_VSOCK.
void ResetSocket(int fd, Entry* e) {
  int fl = ::fcntl(fd, F_GETFL);
  int fdfl = ::fcntl(fd, F_GETFD);
  int type = (e->seqpacket ? SOCK_SEQPACKET : SOCK_STREAM) |
             ((fl >= 0 && (fl & O_NONBLOCK)) ? SOCK_NONBLOCK : 0);
  int fresh = RealSocket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  if (fresh < 0) return;
  if (RealDup3(fresh, fd, (fdfl >= 0 && (fdfl & FD_CLOEXEC)) ? O_CLOEXEC : 0) == fd) {
    SocketIdentity(fd, &e->dev, &e->ino);
  }
  RealClose(fresh);
  e->state = State::kUnbound;
  e->peer_cid = VMADDR_CID_ANY;
  e->peer_port = VMADDR_PORT_ANY;
  e->local_port = VMADDR_PORT_ANY;
  e->local_cid = VMADDR_CID_ANY;
  e->reply.clear();
}

// Maps vsockd's reply line (without '\n') to 0 (and *n) or an errno.
int ParseReply(const std::string& line, uint32_t* n) {
  if (line.rfind("OK", 0) == 0) {
    const char* p = line.c_str() + 2;
    while (*p == ' ') ++p;
    char* end = nullptr;
    unsigned long v = std::strtoul(p, &end, 10);
    *n = (end != p && v <= 0xFFFFFFFFul) ? static_cast<uint32_t>(v) : VMADDR_PORT_ANY;
    return 0;
  }
  if (line.rfind("ERR", 0) != 0) return EPROTO;
  if (line.find("refused") != std::string::npos) return ECONNRESET;  // nobody listens
  if (line.find("did not answer") != std::string::npos ||
      line.find("timeout") != std::string::npos) {
    return ETIMEDOUT;
  }
  if (line.find("reset") != std::string::npos) return ECONNRESET;
  return ECONNREFUSED;
}

constexpr size_t kMaxReplyLine = 128;

// Reads vsockd's reply line from `fd` without reading past it. Returns 0 (OK, *n set),
// EINPROGRESS (not complete and !wait), or an errno. `timeout_ms` < 0: no limit.
int ReadReply(int fd, Entry* e, bool wait, int timeout_ms, uint32_t* n) {
  timespec start;
  ::clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) {
    char buf[kMaxReplyLine];
    if (e->seqpacket) {
      // The reply is exactly one message "OK <n>\n" / "ERR <reason>\n".
      ssize_t r = RealRecv(fd, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
      if (r > static_cast<ssize_t>(sizeof buf)) return EPROTO;
      if (r > 0) {
        std::string line(buf, static_cast<size_t>(r));
        if (line.back() != '\n' || line.find('\n') != line.size() - 1) return EPROTO;
        line.pop_back();
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return ParseReply(line, n);
      }
      if (r == 0) return ECONNRESET;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
    } else {
      ssize_t r = RealRecv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
      if (r > 0) {
        const void* nl = std::memchr(buf, '\n', static_cast<size_t>(r));
        size_t take = nl != nullptr ? static_cast<size_t>(static_cast<const char*>(nl) - buf) + 1
                                    : static_cast<size_t>(r);
        ssize_t got;
        do {
          got = RealRecv(fd, buf, take, MSG_DONTWAIT);
        } while (got < 0 && errno == EINTR);
        if (got <= 0) return got == 0 ? ECONNRESET : errno;
        e->reply.append(buf, static_cast<size_t>(got));
        if (e->reply.back() == '\n') {
          std::string line = e->reply.substr(0, e->reply.size() - 1);
          if (!line.empty() && line.back() == '\r') line.pop_back();
          e->reply.clear();
          return ParseReply(line, n);
        }
        if (e->reply.size() >= kMaxReplyLine) return EPROTO;
        continue;
      }
      if (r == 0) return ECONNRESET;  // vsockd closed without a reply
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
    }
    if (!wait) return EINPROGRESS;
    int left = -1;
    if (timeout_ms >= 0) {
      timespec now;
      ::clock_gettime(CLOCK_MONOTONIC, &now);
      long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
      if (elapsed >= timeout_ms) return ETIMEDOUT;
      left = timeout_ms - static_cast<int>(elapsed);
    }
    pollfd p{fd, POLLIN, 0};
    int pr = ::poll(&p, 1, left);
    if (pr == 0) return ETIMEDOUT;
    // pr < 0 (EINTR): go round; the peek tells what is there.
  }
}

int ConnectTimeoutMs(const Entry& e) {
  long ms = e.connect_timeout.tv_sec * 1000L + e.connect_timeout.tv_usec / 1000;
  if (ms <= 0 || ms > 3600L * 1000) ms = 3600L * 1000;
  return static_cast<int>(ms) + 1000;  // vsockd answers "did not answer" itself first
}

// Finishes a pending non-blocking connect. 0: connected; EINPROGRESS: still pending
// (only when !wait); else the connect's error (the socket is then kFailed).
int FinishPending(int fd, Entry* e, bool wait) {
  if (e->state != State::kConnecting) return 0;
  uint32_t n = 0;
  int err = ReadReply(fd, e, wait, ConnectTimeoutMs(*e), &n);
  if (err == EINPROGRESS) return err;
  SetPending(fd, false);
  if (err == 0) {
    e->state = State::kConnected;
    e->local_cid = VMADDR_CID_HOST;
    e->local_port = n;
  } else {
    e->state = State::kFailed;
  }
  return err;
}

// The read-side prelude: finishes a pending handshake before data is read. Returns 0 to go
// on with the real call, or -1 with errno set.
int BeforeRead(int fd, bool dontwait) {
  if ((Flags(fd) & kPending) == 0) return 0;
  std::shared_ptr<Entry> e = Find(fd);
  if (!e) return 0;
  int err = FinishPending(fd, e.get(), !dontwait && !IsNonBlocking(fd));
  if (err == 0) return 0;
  return Fail(err == EINPROGRESS ? EAGAIN : err);
}

std::atomic<uint32_t> g_next_port{0};

uint32_t EphemeralPort() {
  uint32_t seed = g_next_port.fetch_add(1, std::memory_order_relaxed);
  if (seed == 0) {
    timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    uint32_t base = static_cast<uint32_t>(ts.tv_nsec) ^ static_cast<uint32_t>(::getpid() << 12);
    g_next_port.store(base + 1, std::memory_order_relaxed);
    seed = base;
  }
  // Linux's ephemeral vsock ports: above the reserved range (1023), below 2^31.
  return 1024 + seed % (0x7FFFFFFFu - 1024);
}

int ConnectVsock(int fd, Entry* e, const sockaddr_vm& to) {
  switch (e->state) {
    case State::kConnecting: {
      int err = FinishPending(fd, e, !IsNonBlocking(fd));
      if (err == EINPROGRESS) return Fail(EALREADY);
      if (err == 0) return Fail(EISCONN);
      ResetSocket(fd, e);
      return Fail(err);
    }
    case State::kConnected:
      return Fail(EISCONN);
    case State::kListening:
      return Fail(EINVAL);
    case State::kFailed:
      ResetSocket(fd, e);
      break;
    default:
      break;
  }
  if (to.svm_cid == VMADDR_CID_HOST || to.svm_cid == VMADDR_CID_LOCAL) {
    // Host loopback: straight to the host listener.
    int err =
        BlockingUnixConnect(fd, e->run_dir + "/host_" + std::to_string(to.svm_port) + Suffix(*e));
    if (err == ENOENT || err == ECONNREFUSED) err = ECONNRESET;
    if (err != 0) return Fail(err);
    e->state = State::kConnected;
    e->peer_cid = to.svm_cid;
    e->peer_port = to.svm_port;
    e->local_cid = VMADDR_CID_HOST;
    if (e->local_port == VMADDR_PORT_ANY) e->local_port = EphemeralPort();
    return 0;
  }
  if (to.svm_cid == VMADDR_CID_ANY) return Fail(ENETUNREACH);
  if (to.svm_cid == VMADDR_CID_HYPERVISOR) return Fail(ENODEV);
  int err = BlockingUnixConnect(fd, e->run_dir + "/cid_" + std::to_string(to.svm_cid) + Suffix(*e));
  if (err == ENOENT || err == ECONNREFUSED) err = ENODEV;  // no VM with that CID here
  if (err != 0) return Fail(err);
  std::string cmd = "CONNECT " + std::to_string(to.svm_port) + "\n";
  ssize_t w;
  do {
    w = ::send(fd, cmd.data(), cmd.size(), MSG_NOSIGNAL);
  } while (w < 0 && errno == EINTR);
  if (w != static_cast<ssize_t>(cmd.size())) {
    ResetSocket(fd, e);
    return Fail(ECONNRESET);
  }
  e->peer_cid = to.svm_cid;
  e->peer_port = to.svm_port;
  e->state = State::kConnecting;
  e->reply.clear();
  if (IsNonBlocking(fd)) {
    SetPending(fd, true);
    return Fail(EINPROGRESS);
  }
  err = FinishPending(fd, e, /*wait=*/true);
  if (err != 0) {
    ResetSocket(fd, e);
    return Fail(err);
  }
  return 0;
}

int BindVsock(int fd, Entry* e, const sockaddr_vm& addr) {
  if (e->state != State::kUnbound) return Fail(EINVAL);
  if (addr.svm_cid != VMADDR_CID_HOST && addr.svm_cid != VMADDR_CID_ANY) {
    return Fail(EADDRNOTAVAIL);
  }
  if (addr.svm_port != VMADDR_PORT_ANY && addr.svm_port < 1024 && ::geteuid() != 0) {
    return Fail(EACCES);  // Linux: ports below 1024 need CAP_NET_BIND_SERVICE
  }
  if (::mkdir(e->run_dir.c_str(), 0755) != 0 && errno != EEXIST) return Fail(errno);
  uint32_t port = addr.svm_port;
  int err = 0;
  auto path = [&](uint32_t p) { return e->run_dir + "/host_" + std::to_string(p) + Suffix(*e); };
  if (port == VMADDR_PORT_ANY) {
    err = EADDRINUSE;
    for (int attempt = 0; attempt < 64 && err == EADDRINUSE; ++attempt) {
      port = EphemeralPort();
      err = BindPath(fd, path(port));
    }
  } else {
    err = BindPath(fd, path(port));
  }
  if (err != 0) return Fail(err);
  e->bound_path = path(port);
  struct stat st;
  if (::lstat(e->bound_path.c_str(), &st) == 0) {
    e->bound_dev = st.st_dev;
    e->bound_ino = st.st_ino;
  }
  e->owner = ::getpid();
  e->local_cid = addr.svm_cid;
  e->local_port = port;
  e->state = State::kBound;
  return 0;
}

int AcceptVsock(int fd, const Entry& listener, sockaddr* addr, socklen_t* addrlen, int flags) {
  REAL(accept4);
  if (listener.state != State::kListening) return Fail(EINVAL);
  sockaddr_un peer{};
  socklen_t plen = sizeof peer;
  int c = real_accept4(fd, reinterpret_cast<sockaddr*>(&peer), &plen, flags);
  if (c < 0) return c;
  if (c >= kMaxFds) {
    RealClose(c);
    return Fail(EMFILE);
  }
  auto e = std::make_shared<Entry>();
  SocketIdentity(c, &e->dev, &e->ino);
  e->run_dir = listener.run_dir;
  e->seqpacket = listener.seqpacket;
  e->state = State::kConnected;
  e->local_cid = VMADDR_CID_HOST;
  e->local_port = listener.local_port;
  vsockd::host::CallerName caller;
  if (vsockd::host::ParseCallerAddress(&peer, plen, &caller)) {
    e->peer_cid = static_cast<uint32_t>(caller.guest_cid);
    e->peer_port = caller.guest_port;
  } else {
    e->peer_cid = VMADDR_CID_HOST;
    e->peer_port = VMADDR_PORT_ANY;
  }
  uint32_t pc = e->peer_cid, pp = e->peer_port;
  Track(c, std::move(e));
  FillVm(addr, addrlen, pc, pp);
  return c;
}

template <typename T>
int GetOpt(const T& value, void* optval, socklen_t* optlen) {
  if (optval == nullptr || optlen == nullptr || *optlen < static_cast<socklen_t>(sizeof value)) {
    return Fail(EINVAL);
  }
  std::memcpy(optval, &value, sizeof value);
  *optlen = sizeof value;
  return 0;
}

template <typename T>
int SetOpt(T* value, const void* optval, socklen_t optlen) {
  if (optval == nullptr || optlen < static_cast<socklen_t>(sizeof *value)) return Fail(EINVAL);
  std::memcpy(value, optval, sizeof *value);
  return 0;
}

}  // namespace

// ----------------------------------------------------------------------------- interposers

extern "C" {

__attribute__((visibility("default"))) int socket(int domain, int type, int protocol) {
  if (domain != AF_VSOCK) {
    int fd = RealSocket(domain, type, protocol);
    Forget(fd);
    return fd;
  }
  int base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (base != SOCK_STREAM && base != SOCK_SEQPACKET) return Fail(ESOCKTNOSUPPORT);
  if (protocol != 0) return Fail(EPROTONOSUPPORT);
  auto e = std::make_shared<Entry>();
  if (!RunDir(&e->run_dir)) return Fail(EAFNOSUPPORT);
  e->seqpacket = base == SOCK_SEQPACKET;
  int fd = RealSocket(AF_UNIX, base | (type & (SOCK_NONBLOCK | SOCK_CLOEXEC)), 0);
  if (fd < 0) return fd;
  if (fd >= kMaxFds) {
    RealClose(fd);
    return Fail(EMFILE);
  }
  SocketIdentity(fd, &e->dev, &e->ino);
  Track(fd, std::move(e));
  return fd;
}

__attribute__((visibility("default"))) int socketpair(int domain, int type, int protocol,
                                                      int sv[2]) {
  REAL(socketpair);
  if (domain == AF_VSOCK) return Fail(EOPNOTSUPP);
  int rc = real_socketpair(domain, type, protocol, sv);
  if (rc == 0) {
    Forget(sv[0]);
    Forget(sv[1]);
  }
  return rc;
}

__attribute__((visibility("default"))) int bind(int fd, const sockaddr* addr, socklen_t len) {
  std::shared_ptr<Entry> e = Find(fd);
  if (!e) return RealBind(fd, addr, len);
  sockaddr_vm vm;
  if (int err = ParseVm(addr, len, &vm); err != 0) return Fail(err);
  return BindVsock(fd, e.get(), vm);
}

__attribute__((visibility("default"))) int listen(int fd, int backlog) {
  REAL(listen);
  std::shared_ptr<Entry> e = Find(fd);
  if (!e) return real_listen(fd, backlog);
  if (e->state != State::kBound && e->state != State::kListening) return Fail(EINVAL);
  if (real_listen(fd, backlog) != 0) return -1;
  e->state = State::kListening;
  return 0;
}

__attribute__((visibility("default"))) int accept4(int fd, sockaddr* addr, socklen_t* addrlen,
                                                   int flags) {
  REAL(accept4);
  std::shared_ptr<Entry> e = Find(fd);
  if (!e) {
    int c = real_accept4(fd, addr, addrlen, flags);
    Forget(c);
    return c;
  }
  return AcceptVsock(fd, *e, addr, addrlen, flags);
}

__attribute__((visibility("default"))) int accept(int fd, sockaddr* addr, socklen_t* addrlen) {
  REAL(accept);
  std::shared_ptr<Entry> e = Find(fd);
  if (!e) {
    int c = real_accept(fd, addr, addrlen);
    Forget(c);
    return c;
  }
  return AcceptVsock(fd, *e, addr, addrlen, 0);
}

__attribute__((visibility("default"))) int connect(int fd, const sockaddr* addr, socklen_t len) {
  std::shared_ptr<Entry> e = Find(fd);
  if (!e) return RealConnect(fd, addr, len);
  sockaddr_vm vm;
  if (int err = ParseVm(addr, len, &vm); err != 0) return Fail(err);
  return ConnectVsock(fd, e.get(), vm);
}

__attribute__((visibility("default"))) int getsockname(int fd, sockaddr* addr, socklen_t* len) {
  REAL(getsockname);
  std::shared_ptr<Entry> e = Find(fd);
  if (!e) return real_getsockname(fd, addr, len);
  if (addr == nullptr || len == nullptr) return Fail(EFAULT);
  FillVm(addr, len, e->local_cid, e->local_port);
  return 0;
}

__attribute__((visibility("default"))) int getpeername(int fd, sockaddr* addr, socklen_t* len) {
  REAL(getpeername);
  std::shared_ptr<Entry> e = Find(fd);
  if (!e) return real_getpeername(fd, addr, len);
  if (e->state != State::kConnected && e->state != State::kConnecting) return Fail(ENOTCONN);
  if (addr == nullptr || len == nullptr) return Fail(EFAULT);
  FillVm(addr, len, e->peer_cid, e->peer_port);
  return 0;
}

__attribute__((visibility("default"))) int close(int fd) {
  if (Flags(fd) == 0) return RealClose(fd);
  std::shared_ptr<Entry> e = Untrack(fd);
  int rc = RealClose(fd);
  int saved = errno;
  if (e) RemoveBoundFile(*e);
  errno = saved;
  return rc;
}

__attribute__((visibility("default"))) int dup2(int oldfd, int newfd) {
  REAL(dup2);
  int rc = real_dup2(oldfd, newfd);
  if (rc >= 0 && oldfd != newfd) Forget(rc);
  return rc;
}

__attribute__((visibility("default"))) int dup3(int oldfd, int newfd, int flags) {
  int rc = RealDup3(oldfd, newfd, flags);
  if (rc >= 0) Forget(rc);
  return rc;
}

__attribute__((visibility("default"))) int getsockopt(int fd, int level, int optname, void* optval,
                                                      socklen_t* optlen) {
  REAL(getsockopt);
  if (Flags(fd) == 0 || (level != SOL_SOCKET && level != AF_VSOCK)) {
    return real_getsockopt(fd, level, optname, optval, optlen);
  }
  std::shared_ptr<Entry> e = Find(fd);
  if (!e) return real_getsockopt(fd, level, optname, optval, optlen);
  if (level == SOL_SOCKET) {
    if (optname == SO_DOMAIN) return GetOpt<int>(AF_VSOCK, optval, optlen);
    if (optname == SO_ERROR && e->state == State::kConnecting) {
      int err = FinishPending(fd, e.get(), /*wait=*/false);
      if (err == EINPROGRESS) err = 0;  // not answered yet: the first read finishes it
      if (err != 0) ResetSocket(fd, e.get());
      return GetOpt<int>(err, optval, optlen);
    }
    return real_getsockopt(fd, level, optname, optval, optlen);
  }
  switch (optname) {
    case SO_VM_SOCKETS_BUFFER_SIZE:
      return GetOpt(e->buffer_size, optval, optlen);
    case SO_VM_SOCKETS_BUFFER_MIN_SIZE:
      return GetOpt(e->buffer_min, optval, optlen);
    case SO_VM_SOCKETS_BUFFER_MAX_SIZE:
      return GetOpt(e->buffer_max, optval, optlen);
    case SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD:
    case SO_VM_SOCKETS_CONNECT_TIMEOUT_NEW:
      return GetOpt(e->connect_timeout, optval, optlen);
    default:
      return Fail(ENOPROTOOPT);
  }
}

__attribute__((visibility("default"))) int setsockopt(int fd, int level, int optname,
                                                      const void* optval, socklen_t optlen) {
  REAL(setsockopt);
  if (Flags(fd) == 0 || level != AF_VSOCK) {
    return real_setsockopt(fd, level, optname, optval, optlen);
  }
  std::shared_ptr<Entry> e = Find(fd);
  if (!e) return real_setsockopt(fd, level, optname, optval, optlen);
  switch (optname) {
    case SO_VM_SOCKETS_BUFFER_SIZE:
      return SetOpt(&e->buffer_size, optval, optlen);
    case SO_VM_SOCKETS_BUFFER_MIN_SIZE:
      return SetOpt(&e->buffer_min, optval, optlen);
    case SO_VM_SOCKETS_BUFFER_MAX_SIZE:
      return SetOpt(&e->buffer_max, optval, optlen);
    case SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD:
    case SO_VM_SOCKETS_CONNECT_TIMEOUT_NEW: {
      timeval tv;
      if (SetOpt(&tv, optval, optlen) != 0) return -1;
      if (tv.tv_sec < 0 || tv.tv_usec < 0 || tv.tv_usec >= 1000000) return Fail(EDOM);
      e->connect_timeout = tv;
      return 0;
    }
    default:
      return Fail(ENOPROTOOPT);
  }
}

__attribute__((visibility("default"))) ssize_t read(int fd, void* buf, size_t len) {
  REAL(read);
  if (BeforeRead(fd, false) != 0) return -1;
  return real_read(fd, buf, len);
}

__attribute__((visibility("default"))) ssize_t readv(int fd, const iovec* iov, int iovcnt) {
  REAL(readv);
  if (BeforeRead(fd, false) != 0) return -1;
  return real_readv(fd, iov, iovcnt);
}

__attribute__((visibility("default"))) ssize_t recv(int fd, void* buf, size_t len, int flags) {
  if (BeforeRead(fd, (flags & MSG_DONTWAIT) != 0) != 0) return -1;
  return RealRecv(fd, buf, len, flags);
}

__attribute__((visibility("default"))) ssize_t recvfrom(int fd, void* buf, size_t len, int flags,
                                                        sockaddr* addr, socklen_t* addrlen) {
  REAL(recvfrom);
  if (BeforeRead(fd, (flags & MSG_DONTWAIT) != 0) != 0) return -1;
  ssize_t n = real_recvfrom(fd, buf, len, flags, addr, addrlen);
  // A stream socket reports no source address; AF_UNIX would say "unnamed AF_UNIX".
  if (n >= 0 && addr != nullptr && addrlen != nullptr && (Flags(fd) & kTracked) != 0) *addrlen = 0;
  return n;
}

__attribute__((visibility("default"))) ssize_t recvmsg(int fd, msghdr* msg, int flags) {
  REAL(recvmsg);
  if (BeforeRead(fd, (flags & MSG_DONTWAIT) != 0) != 0) return -1;
  return real_recvmsg(fd, msg, flags);
}

// _FORTIFY_SOURCE builds call these instead of read/recv: glibc's names, so interposing them
// needs the reserved identifiers.
// NOLINTNEXTLINE(bugprone-reserved-identifier)
ssize_t __read_chk(int fd, void* buf, size_t len, size_t buflen);
// NOLINTNEXTLINE(bugprone-reserved-identifier)
__attribute__((visibility("default"))) ssize_t __read_chk(int fd, void* buf, size_t len,
                                                          size_t buflen) {
  REAL(__read_chk);
  if (BeforeRead(fd, false) != 0) return -1;
  return real___read_chk(fd, buf, len, buflen);
}

ssize_t __recv_chk(  // NOLINT(bugprone-reserved-identifier)
    int fd, void* buf, size_t len, size_t buflen, int flags);
// NOLINTNEXTLINE(bugprone-reserved-identifier)
__attribute__((visibility("default"))) ssize_t __recv_chk(int fd, void* buf, size_t len,
                                                          size_t buflen, int flags) {
  REAL(__recv_chk);
  if (BeforeRead(fd, (flags & MSG_DONTWAIT) != 0) != 0) return -1;
  return real___recv_chk(fd, buf, len, buflen, flags);
}

}  // extern "C"
