// AF_UNIX helpers: listening/connecting on filesystem paths, and fd passing (SCM_RIGHTS).
//
// Callers: the vhost-user codec (both sides), the hybrid host backend, vguest, tests.
// Threading: stateless functions.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <span>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"

namespace vsockd {

// Fills a sockaddr_un for `path`. A path starting with '@' names the abstract namespace.
// Fails with ENAMETOOLONG if it does not fit (108 bytes with the terminating NUL).
Result<socklen_t> MakeUnixAddress(const std::string& path, sockaddr_un* addr);

// Creates a listening stream socket at `path`, replacing a stale socket file left there.
// The socket is close-on-exec; `nonblocking` applies to the listening fd.
Result<Fd> ListenUnix(const std::string& path, int backlog = 128, bool nonblocking = true,
                      int type = SOCK_STREAM);

// Connects a blocking (or, with nonblocking=true, a non-blocking) stream socket.
// Non-blocking AF_UNIX connects complete at once or fail (EAGAIN when the backlog is full).
Result<Fd> ConnectUnix(const std::string& path, bool nonblocking = false, int type = SOCK_STREAM);

// The socket's type (SOCK_STREAM, SOCK_SEQPACKET, ...); -1 if `fd` is not a socket.
int SocketType(int fd);

// The address of `fd`'s own end (peer=false, getsockname) or of its peer (getpeername): a
// path, "@name" for the abstract namespace, or "" (unnamed, unbound, not AF_UNIX).
std::string UnixSocketName(int fd, bool peer = false);

// sendmsg with up to 8 fds as SCM_RIGHTS on the first byte. Blocking semantics: sends all.
Status SendWithFds(int sock, const void* data, size_t len, std::span<const int> fds);

// recvmsg that collects SCM_RIGHTS fds (at most `max_fds`, extra ones are closed, and the
// call fails with EBADMSG). Returns bytes read (0 on EOF).
Result<size_t> RecvWithFds(int sock, void* data, size_t len, std::vector<Fd>* fds,
                           size_t max_fds = 8);

}  // namespace vsockd
