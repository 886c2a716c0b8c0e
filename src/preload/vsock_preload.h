// libvsock_preload.so: AF_VSOCK for unmodified host programs, over vsockd's run directory.
//
// Role: an LD_PRELOAD shim. A program that opens socket(AF_VSOCK, SOCK_STREAM, 0) on a host
// without vhost_vsock (or where vsockd, not the kernel, serves the VMs) gets an AF_UNIX stream
// socket instead, and the shim translates the vsock calls:
//
//   bind((VMADDR_CID_HOST | VMADDR_CID_ANY, P))  binds "DIR/host_P" (VMADDR_PORT_ANY: a free
//       port >= 1024; a stale socket file is replaced; a live one -> EADDRINUSE; P < 1024
//       without root -> EACCES; another CID -> EADDRNOTAVAIL). listen() listens there: every
//       vsockd started with --run-dir DIR sends its guests' connects to host port P there.
//   accept/accept4  report the peer as sockaddr_vm {guest CID, guest port}, read from the
//       abstract name vsockd binds its connects to (src/host/caller_name.h). A peer without
//       such a name (a host program connecting to DIR/host_P itself, or a vsockd whose
//       name was taken) is reported as {VMADDR_CID_HOST, VMADDR_PORT_ANY}.
//   connect((CID >= 3, P))  connects to "DIR/cid_<CID>" (vsockd --run-dir), writes
//       "CONNECT P\n" and reads "OK <n>\n" (n becomes the local port getsockname reports:
//       the host-side port vsockd allocated, or the guest port with --ok-reply guest-port).
//       Errors, as Linux AF_VSOCK reports them: no such VM (no DIR/cid_<CID>) -> ENODEV;
//       nobody listens on guest port P (vsockd: "ERR connection refused...") -> ECONNRESET;
//       the guest did not answer -> ETIMEDOUT; vsockd closed without a reply -> ECONNRESET;
//       any other ERR -> ECONNREFUSED. After a failed connect the socket is a fresh unconnected
//       one again (connect may be retried), as with AF_VSOCK.
//       Blocking sockets do the whole handshake inside connect() (bounded by
//       SO_VM_SOCKETS_CONNECT_TIMEOUT, default 2 s, plus 1 s for vsockd's own answer).
//       Non-blocking sockets (SOCK_NONBLOCK or fcntl O_NONBLOCK) return EINPROGRESS at once;
//       the handshake is then finished without blocking, whichever comes first:
//         - getsockopt(SOL_SOCKET, SO_ERROR): if the reply line is there it is consumed and
//           SO_ERROR is 0 (OK) or the error above; if not yet, SO_ERROR is 0 and the socket is
//           treated as connected with the reply still pending;
//         - the first read/recv/recvfrom/recvmsg/readv: consumes the reply line first, then
//           reads data (EAGAIN if only the reply was there); a failure reply makes that read
//           fail with the error above;
//         - connect() again: EALREADY while pending, EISCONN once OK, the error on failure.
//       POLLOUT/EPOLLOUT is reported at once (the AF_UNIX socket is writable); data written
//       before the OK waits in the socket and reaches the guest after it. POLLIN is reported
//       when the reply (or data) arrives, so poll/select/epoll users see their first data
//       normally.
//   connect((VMADDR_CID_HOST | VMADDR_CID_LOCAL, P))  host loopback: connects straight to
//       "DIR/host_P" (nobody there -> ECONNRESET).
//   getsockname  {VMADDR_CID_HOST (or the bound CID), local port}; getpeername {CID, port} of
//       the peer (ENOTCONN when not connected).
//   getsockopt/setsockopt  level AF_VSOCK: SO_VM_SOCKETS_BUFFER_{SIZE,MIN_SIZE,MAX_SIZE} and
//       SO_VM_SOCKETS_CONNECT_TIMEOUT_{OLD,NEW} are stored (the timeout bounds blocking
//       connects); others ENOPROTOOPT. SOL_SOCKET: SO_ERROR as above, SO_DOMAIN is AF_VSOCK,
//       the rest pass through to the AF_UNIX socket.
//   close  forgets the fd and removes "DIR/host_P" if this process created it.
//   socketpair(AF_VSOCK) -> EOPNOTSUPP, as Linux. Other socket types -> ESOCKTNOSUPPORT.
//   SOCK_SEQPACKET: an AF_UNIX SOCK_SEQPACKET socket under vsockd's SEQPACKET names (see
//       src/host/unix_backend.h): bind/listen serve "DIR/host_P.seqpacket"; connect goes to
//       "DIR/cid_<CID>.seqpacket" (host loopback: "DIR/host_P.seqpacket"), the CONNECT / OK
//       handshake being one message each way; everything else as above. Message boundaries,
//       recv/recvmsg truncation and MSG_TRUNC are AF_UNIX's (the same as AF_VSOCK's); MSG_EOR
//       is accepted on send and never reported on receive (AF_UNIX does not carry it).
// Nothing here ever creates an AF_VSOCK socket. Every other call passes straight through
// (one relaxed atomic load of a per-fd flag byte).
//
// DIR, the run directory: $VSOCKD_RUN_DIR if set, else /run/vsockd for root, else
// $XDG_RUNTIME_DIR/vsockd; with none of these, socket(AF_VSOCK) fails with EAFNOSUPPORT. It is
// read when the socket is created; bind creates the directory (one level) if missing.
//
// Limits: fds above 65535 cannot be vsock sockets (socket() fails with EMFILE). A vsock fd
// duplicated with dup/fcntl(F_DUPFD) or inherited across exec is a plain AF_UNIX socket for
// the shim. O_NONBLOCK is read from the real fd (fcntl needs no interposition). A socket reset
// after a failed connect is a new file under the same fd number: an epoll registration made
// before the failure must be renewed.
//
// Threading: the fd table is guarded by a mutex (entries are shared_ptrs, so a concurrent
// close cannot free an entry another call is using); per-fd flags are atomics. As with any
// socket, calls that change one socket's state (bind, listen, connect) must not race on the
// same fd.
#pragma once

// The shim exports the libc socket functions only; it has no API of its own.
