// Inherited vhost-user listening sockets: socket activation, so QEMU can start before vsockd.
//
// Role: a VM's vhost-user socket (VmOptions::socket_path, the `socket` key, --socket) may be
//  - PATH: vsockd listens on PATH itself, unless it was socket-activated and one of the
//    sockets systemd passed is bound to exactly PATH (a socket unit's ListenStream=PATH):
//    then that socket is served and the file is left alone (it is systemd's);
//  - fd:N: the listening socket vsockd inherited as descriptor N (as virtiofsd's --fd and
//    qemu-storage-daemon's addr.type=fd), e.g. from a launcher that created it;
//  - systemd:NAME: the socket systemd passed with FileDescriptorName=NAME (LISTEN_FDNAMES).
// A path that is literally "fd:3" is written "./fd:3". Every inherited socket must be a
// listening AF_UNIX stream socket; anything else stops vsockd at start with the reason.
//
// systemd's side is the sd_listen_fds(3) protocol, done here without libsystemd: when
// LISTEN_PID is our pid, LISTEN_FDS sockets start at descriptor 3 (SD_LISTEN_FDS_START),
// named by the ':'-separated LISTEN_FDNAMES. The variables are removed from the environment
// once read (as sd_listen_fds(1) does), and the descriptors get FD_CLOEXEC.
//
// The pool keeps every inherited descriptor for the daemon's life and hands out duplicates,
// so a VM that stops and starts again (a reload) finds its socket again.
// Callers: options.cc (ParseSocketSpec checks the text), daemon.cc (one pool per Daemon;
// each Vm asks it for its socket). Threading: used by one thread at a time (the daemon's,
// or a worker while the daemon's thread waits for it).
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "base/fd.h"
#include "base/result.h"

namespace vsockd::daemon {

// SD_LISTEN_FDS_START.
inline constexpr int kListenFdsStart = 3;

// A VM's vhost-user socket text, classified.
struct SocketSpec {
  enum class Kind { kPath, kFd, kSystemdName };
  Kind kind = Kind::kPath;
  std::string path;  // kPath
  int fd = -1;       // kFd
  std::string name;  // kSystemdName
};

// Parses "PATH", "fd:N" or "systemd:NAME". Errors name the form that is wrong.
Result<SocketSpec> ParseSocketSpec(std::string_view text);

class InheritedSockets {
 public:
  InheritedSockets() = default;
  InheritedSockets(InheritedSockets&&) = default;
  InheritedSockets& operator=(InheritedSockets&&) = default;

  // The sockets systemd passed to this process (see above), removing LISTEN_PID, LISTEN_FDS
  // and LISTEN_FDNAMES from the environment. Not socket-activated (no LISTEN_PID, or another
  // process's): an empty pool. Malformed variables: an error.
  static Result<InheritedSockets> FromEnvironment();
  // The same from given values (tests): `count` descriptors from `first_fd`, when
  // `listen_pid` is `self`.
  static Result<InheritedSockets> FromValues(std::string_view listen_pid,
                                             std::string_view listen_fds,
                                             std::string_view listen_fdnames, pid_t self,
                                             int first_fd = kListenFdsStart);

  // The listening socket for `spec`, as a new descriptor (a duplicate; the pool keeps its
  // own). An invalid Fd when `spec` is a path that no passed socket is bound to (the caller
  // listens on the path itself). Errors: fd:N that is not an open listening AF_UNIX stream
  // socket; systemd:NAME that was not passed, or was passed more than once.
  Result<Fd> Find(const SocketSpec& spec);

  // Sockets systemd passed that no Find() has used yet, as "NAME (PATH)" for a warning.
  std::vector<std::string> Unused() const;
  size_t size() const { return sockets_.size(); }

 private:
  struct Socket {
    Fd fd;
    std::string name;     // from LISTEN_FDNAMES ("" for fd:N adopted here)
    std::string address;  // bound path, "@name" for an abstract one, "" if unnamed
    bool from_systemd = false;
    bool used = false;
  };
  Result<Fd> Hand(Socket* socket);

  std::vector<Socket> sockets_;
};

// Checks that `fd` is a listening AF_UNIX stream socket; the error says what it is instead.
Status CheckListeningUnixStream(int fd);

}  // namespace vsockd::daemon
