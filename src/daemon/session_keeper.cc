#include "daemon/session_keeper.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <string_view>

#include "base/byte_codec.h"
#include "base/log.h"
#include "vhost_user/backend.h"

namespace vsockd::daemon {
namespace {

enum MessageType : uint32_t {
  kSession = 1,     // payload: SessionState bytes; fds: connection, then the state's
  kSessionEnd = 2,  // no payload
  kConnOpen = 3,    // payload: one connection record
  kConnClose = 4,   // payload: one connection record
  kConns = 5,       // keeper -> worker: payload: count records
  kDone = 6,        // keeper -> worker: everything was sent
};

constexpr size_t kHeaderBytes = 16;  // type u32, count u32, cid u64 (little-endian)
constexpr size_t kRecordBytes = 18;  // guest_port u32, peer cid u64, peer port u32, type u16
constexpr size_t kMaxPayload = 64 * 1024;
constexpr size_t kMaxFds = 64;
constexpr size_t kRecordsPerMessage = 2048;

void PutRecord(ByteWriter* out, const vsock::ConnectionInfo& c) {
  out->Put(c.guest_port);
  out->Put(c.host_cid);
  out->Put(c.host_port);
  out->Put(c.type);
}
// Reads `count` records of VM `cid` (false if the payload is not exactly that).
bool GetRecords(std::span<const uint8_t> payload, uint64_t cid, size_t count,
                std::vector<vsock::ConnectionInfo>* out) {
  if (payload.size() != count * kRecordBytes) return false;
  ByteReader r(payload);
  for (size_t i = 0; i < count; ++i) {
    vsock::ConnectionInfo c;
    c.guest_cid = cid;
    if (!r.Get(&c.guest_port) || !r.Get(&c.host_cid) || !r.Get(&c.host_port) || !r.Get(&c.type)) {
      return false;
    }
    out->push_back(c);
  }
  return true;
}
// A connection's identity in the guest: (guest port, peer cid, peer port).
std::tuple<uint32_t, uint64_t, uint32_t> RecordKey(const vsock::ConnectionInfo& c) {
  return {c.guest_port, c.host_cid, c.host_port};
}

struct Message {
  uint32_t type = 0;
  uint32_t count = 0;
  uint64_t cid = 0;
  std::vector<uint8_t> payload;
  std::vector<Fd> fds;
};

Status SendMessage(int fd, uint32_t type, uint32_t count, uint64_t cid,
                   const std::vector<uint8_t>& payload, const std::vector<int>& fds) {
  if (fds.size() > kMaxFds) return MakeError(E2BIG, "{} descriptors in one message", fds.size());
  ByteWriter header;
  header.Put(type);
  header.Put(count);
  header.Put(cid);
  // Header and payload gathered by sendmsg: one record, no copy of the payload.
  iovec iov[2] = {{header.bytes().data(), header.bytes().size()},
                  {const_cast<uint8_t*>(payload.data()), payload.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = payload.empty() ? 1 : 2;
  std::vector<uint8_t> control(CMSG_SPACE(sizeof(int) * kMaxFds));
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do {
    n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoError("send to the session keeper link");
  return OkStatus();
}

// One message; ENODATA at EOF, EAGAIN when none waits on a non-blocking socket.
Result<Message> ReceiveMessage(int fd, int flags = 0) {
  std::vector<uint8_t> buf(kHeaderBytes + kMaxPayload);
  iovec iov{buf.data(), buf.size()};
  std::vector<uint8_t> control(CMSG_SPACE(sizeof(int) * kMaxFds));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t n;
  do {
    n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | flags);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoError("receive on the session keeper link");
  Message m;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int received;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      m.fds.emplace_back(received);
    }
  }
  if (n == 0) return MakeError(ENODATA, "the session keeper link closed");
  if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 || static_cast<size_t>(n) < kHeaderBytes) {
    return MakeError(EPROTO, "malformed message on the session keeper link");
  }
  ByteReader r(std::span<const uint8_t>(buf.data(), static_cast<size_t>(n)));
  (void)(r.Get(&m.type) && r.Get(&m.count) && r.Get(&m.cid));  // n >= kHeaderBytes
  m.payload.assign(r.rest().begin(), r.rest().end());
  return m;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// The worker's side
// ---------------------------------------------------------------------------------------

Result<KeptSessions> KeeperLink::ReceiveKept() {
  // The keeper sends everything right after starting us: never wait long.
  timeval tv{10, 0};
  (void)::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  KeptSessions kept;
  for (;;) {
    auto m = ReceiveMessage(fd_.get());
    if (!m.ok()) return m.take_error();
    switch (m->type) {
      case kDone:
        tv = {0, 0};
        (void)::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        return kept;
      case kSession: {
        if (m->fds.empty()) return MakeError(EPROTO, "kept session without its connection");
        auto state = vhost_user::SessionState::Decode(m->payload, m->fds.size() - 1);
        if (!state.ok()) return state.take_error();
        KeptSession& k = kept[m->cid];
        k.connection = std::move(m->fds[0]);
        k.state = std::move(*state);
        k.fds.clear();
        for (size_t i = 1; i < m->fds.size(); ++i) k.fds.push_back(std::move(m->fds[i]));
        break;
      }
      case kConns: {
        if (!GetRecords(m->payload, m->cid, m->count, &kept[m->cid].connections)) {
          return MakeError(EPROTO, "kept connection list of the wrong size");
        }
        break;
      }
      default:
        return MakeError(EPROTO, "unexpected message {} from the session keeper", m->type);
    }
  }
}

void KeeperLink::Send(uint32_t type, uint64_t cid, const std::vector<uint8_t>& payload,
                      const std::vector<int>& fds) {
  Status st = SendMessage(fd_.get(), type, 0, cid, payload, fds);
  if (!st.ok()) {
    LOG_RATELIMITED(LogLevel::kWarn, "session keeper: {} (a restart would lose this VM's session)",
                    st.error().ToString());
  }
}

void KeeperLink::SendSession(uint64_t cid, const vhost_user::Backend& backend) {
  if (!backend.connected()) {
    Send(kSessionEnd, cid, {}, {});
    return;
  }
  std::vector<int> fds;
  vhost_user::SessionState state = backend.Snapshot(&fds);
  fds.insert(fds.begin(), backend.connection_fd());
  Send(kSession, cid, state.Encode(), fds);
}

void KeeperLink::SendConnection(uint64_t cid, const vsock::ConnectionInfo& info, bool opened) {
  ByteWriter record;
  PutRecord(&record, info);
  Send(opened ? kConnOpen : kConnClose, cid, record.bytes(), {});
}

// ---------------------------------------------------------------------------------------
// The keeper
// ---------------------------------------------------------------------------------------
namespace {

struct Kept {
  std::vector<uint8_t> state;
  std::vector<Fd> fds;  // fds[0]: the frontend's connection
  std::map<std::tuple<uint32_t, uint64_t, uint32_t>, vsock::ConnectionInfo> conns;
};

class Keeper {
 public:
  Keeper(int argc, char** argv, int ready_fd) : ready_fd_(ready_fd) {
    for (int i = 1; i < argc; ++i) args_.emplace_back(argv[i]);
  }

  int Run();

 private:
  Status Spawn(bool first);
  void Drain(int flags);
  void Apply(Message m);
  void SendKept(int fd);
  // Returns true when the keeper is done (with *exit_code set).
  bool OnWorkerExit(int status, int* exit_code);

  std::vector<std::string> args_;
  int ready_fd_;
  std::string exe_;
  pid_t worker_ = -1;
  Fd link_;
  std::map<uint64_t, Kept> kept_;
  bool stopping_ = false;
  bool upgrading_ = false;
  std::deque<std::chrono::steady_clock::time_point> crashes_;
};

Status Keeper::Spawn(bool first) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    return ErrnoError("socketpair for the worker link");
  }
  Fd mine(sv[0]);
  Fd theirs(sv[1]);
  std::vector<std::string> args;
  args.push_back(exe_);
  for (size_t i = 0; i < args_.size(); ++i) {
    std::string_view a = args_[i];
    // Only the first worker reports readiness (the descriptor is closed after it).
    if (!first && a == "--ready-fd") {
      ++i;
      continue;
    }
    if (!first && a.rfind("--ready-fd=", 0) == 0) continue;
    args.push_back(args_[i]);
  }
  args.push_back("--keeper-fd=" + std::to_string(theirs.get()));
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return ErrnoError("fork of the vsockd worker");
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::fcntl(theirs.get(), F_SETFD, 0);  // survives exec
    ::execv(exe_.c_str(), argv.data());
    ::_exit(127);
  }
  worker_ = pid;
  theirs.Reset();
  if (first && ready_fd_ >= 0) {
    ::close(ready_fd_);  // the worker reports; a worker that fails closes it, meaning "failed"
    ready_fd_ = -1;
  }
  link_ = std::move(mine);
  LOG_INFO("worker {} started ({}{})", pid, exe_,
           first ? "" : fmt::format(", {} kept sessions", kept_.size()));
  SendKept(link_.get());
  return OkStatus();
}

void Keeper::SendKept(int fd) {
  for (auto& entry : kept_) {
    const uint64_t cid = entry.first;
    Kept& k = entry.second;
    std::vector<int> fds;
    for (const Fd& f : k.fds) fds.push_back(f.get());
    Status st = SendMessage(fd, kSession, 0, cid, k.state, fds);
    ByteWriter batch;
    uint32_t n = 0;
    auto flush = [&] {
      if (n == 0 || !st.ok()) return;
      st = SendMessage(fd, kConns, n, cid, batch.bytes(), {});
      batch.bytes().clear();
      n = 0;
    };
    for (const auto& [key, info] : k.conns) {
      PutRecord(&batch, info);
      if (++n == kRecordsPerMessage) flush();
    }
    flush();
    // The new worker resets them: forget them here, or a second restart would reset them
    // again (and the guest may have reused their ports by then).
    k.conns.clear();
    if (!st.ok()) LOG_WARN("sending VM {}'s kept session: {}", cid, st.error().ToString());
  }
  Status st = SendMessage(fd, kDone, 0, 0, {}, {});
  if (!st.ok()) LOG_WARN("worker link: {}", st.error().ToString());
}

void Keeper::Apply(Message m) {
  switch (m.type) {
    case kSession: {
      if (m.fds.empty() || !vhost_user::SessionState::Decode(m.payload, m.fds.size() - 1).ok()) {
        LOG_WARN("worker sent a malformed session for VM {}: ignored", m.cid);
        return;
      }
      Kept& k = kept_[m.cid];
      k.state = std::move(m.payload);
      k.fds = std::move(m.fds);
      return;
    }
    case kSessionEnd:
      kept_.erase(m.cid);
      return;
    case kConnOpen:
    case kConnClose: {
      std::vector<vsock::ConnectionInfo> one;
      auto it = kept_.find(m.cid);
      if (it == kept_.end() || !GetRecords(m.payload, m.cid, 1, &one)) return;
      const vsock::ConnectionInfo& info = one.front();
      if (m.type == kConnOpen) {
        it->second.conns[RecordKey(info)] = info;
      } else {
        it->second.conns.erase(RecordKey(info));
      }
      return;
    }
    default:
      LOG_WARN("worker sent message type {}: ignored", m.type);
  }
}

void Keeper::Drain(int flags) {
  while (link_) {
    auto m = ReceiveMessage(link_.get(), flags);
    if (!m.ok()) {
      if (m.error().code == EAGAIN || m.error().code == EWOULDBLOCK) return;
      link_.Reset();  // EOF or error: the worker is gone (SIGCHLD follows)
      return;
    }
    Apply(std::move(*m));
  }
}

bool Keeper::OnWorkerExit(int status, int* exit_code) {
  Drain(MSG_DONTWAIT);  // what the worker sent before it went
  link_.Reset();
  worker_ = -1;
  const bool handover = WIFEXITED(status) && WEXITSTATUS(status) == kExitHandover;
  if (stopping_) {
    *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    return true;
  }
  if (handover || upgrading_) {
    upgrading_ = false;
    LOG_INFO("worker handed over {} sessions: starting {}", kept_.size(), exe_);
  } else if (WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 2)) {
    *exit_code = WEXITSTATUS(status);  // a clean stop, or a usage/configuration error
    return true;
  } else {
    auto now = std::chrono::steady_clock::now();
    crashes_.push_back(now);
    while (!crashes_.empty() && now - crashes_.front() > kCrashWindow) crashes_.pop_front();
    LOG_ERROR("worker died ({}{}); restarting it with {} kept sessions",
              WIFSIGNALED(status) ? "signal " : "exit status ",
              WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), kept_.size());
    if (crashes_.size() > static_cast<size_t>(kMaxCrashes)) {
      LOG_ERROR("the worker died {} times within {} s: giving up", crashes_.size(),
                kCrashWindow.count());
      *exit_code = 1;
      return true;
    }
  }
  if (Status st = Spawn(/*first=*/false); !st.ok()) {
    LOG_ERROR("{}", st.error().ToString());
    *exit_code = 1;
    return true;
  }
  return false;
}

int Keeper::Run() {
  char path[4096];
  ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) {
    LOG_ERROR("cannot find our own executable: {}", std::strerror(errno));
    return 1;
  }
  exe_.assign(path, static_cast<size_t>(n));
  sigset_t mask;
  sigemptyset(&mask);
  for (int s : {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR2}) sigaddset(&mask, s);
  ::sigprocmask(SIG_BLOCK, &mask, nullptr);
  Fd sigfd(::signalfd(-1, &mask, SFD_CLOEXEC));
  if (!sigfd) {
    LOG_ERROR("signalfd: {}", std::strerror(errno));
    return 1;
  }
  if (Status st = Spawn(/*first=*/true); !st.ok()) {
    LOG_ERROR("{}", st.error().ToString());
    return 1;
  }
  for (;;) {
    pollfd p[2] = {{sigfd.get(), POLLIN, 0}, {link_ ? link_.get() : -1, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      LOG_ERROR("poll: {}", std::strerror(errno));
      return 1;
    }
    if (p[1].revents != 0) Drain(MSG_DONTWAIT);
    if ((p[0].revents & POLLIN) == 0) continue;
    signalfd_siginfo si;
    if (::read(sigfd.get(), &si, sizeof si) != sizeof si) continue;
    const int sig = static_cast<int>(si.ssi_signo);
    if (sig == SIGCHLD) {
      int status = 0;
      pid_t pid;
      while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid != worker_) continue;
        int code = 0;
        if (OnWorkerExit(status, &code)) return code;
      }
      continue;
    }
    if (sig == SIGTERM || sig == SIGINT) stopping_ = true;
    if (sig == SIGUSR2) {
      upgrading_ = true;
      LOG_INFO("SIGUSR2: upgrading the worker to {}", exe_);
    }
    if (worker_ > 0) ::kill(worker_, sig);
  }
}

}  // namespace

int RunKeeper(int argc, char** argv, int ready_fd) {
  SetLogTag("vsockd-keeper");
  Keeper keeper(argc, argv, ready_fd);
  return keeper.Run();
}

}  // namespace vsockd::daemon
