// Readiness signalling: tells whoever started vsockd that every socket is listening, so a
// launch script can start QEMU (whose vhost-user chardev connects once, without retrying)
// without polling for the socket file.
//
// Two ways, both optional and usable together:
//  - `--ready-fd N`: vsockd writes "READY\n" to file descriptor N and closes it. A shell
//    script: `exec 3< <(vsockd ... --ready-fd 4 4>&1 >&2 &)`, or simply
//    `vsockd ... --ready-fd 3 3>ready.fifo &` and `read line < ready.fifo`. An end of file
//    without the line means vsockd failed to start (its error is on stderr).
//  - systemd's notify protocol (Type=notify): when NOTIFY_SOCKET is set, vsockd sends
//    "READY=1" (with MAINPID) once listening and "STOPPING=1" when it shuts down. Abstract
//    socket names ("@name") are accepted as systemd uses them.
// Callers: vsockd's main() (after Daemon::Create, which listens on every socket). Threading:
// any thread; no state.
#pragma once

#include <string>

#include "base/result.h"

namespace vsockd::daemon {

// Writes "READY\n" to `fd` (retrying short writes) and closes it. fd < 0: nothing to do.
Status SignalReadyFd(int fd);

// Sends `state` (e.g. "READY=1") to $NOTIFY_SOCKET, if set. Not set: Ok, nothing sent.
Status NotifySystemd(const std::string& state);

}  // namespace vsockd::daemon
