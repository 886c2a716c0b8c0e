// vsockd: userspace virtio-vsock device (vhost-user backend) bridging guest vsock
// connections to host Unix sockets. See `vsockd --help` and docs/DESIGN.md.
#include <signal.h>

#include <cstdio>
#include <string>

#include "base/log.h"
#include "daemon/daemon.h"
#include "daemon/options.h"

int main(int argc, char** argv) {
  using namespace vsockd;
  daemon::ParseOutcome parsed = daemon::ParseCommandLine(argc, argv);
  if (!parsed.run) {
    std::fputs(parsed.output.c_str(), parsed.exit_code == 0 ? stdout : stderr);
    return parsed.exit_code;
  }
  SetLogTag("vsockd");
  SetLogLevel(parsed.options.log_level);
  // Writes to host sockets use MSG_NOSIGNAL, but a peer closing under a plain write() must
  // never kill the daemon.
  ::signal(SIGPIPE, SIG_IGN);

  auto d = daemon::Daemon::Create(parsed.options, /*handle_signals=*/true);
  if (!d.ok()) {
    LOG_ERROR("{}", d.error().ToString());
    return 1;
  }
  (*d)->Run();
  d->reset();  // removes the sockets before we report
  LOG_INFO("stopped");
  return 0;
}
