// vsockd: userspace virtio-vsock device (vhost-user backend) bridging guest vsock
// connections to host Unix sockets. See `vsockd --help` and docs/DESIGN.md.
#include <signal.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "base/log.h"
#include "daemon/daemon.h"
#include "daemon/options.h"
#include "daemon/readiness.h"

namespace {

// Every guest connection holds one host socket, so a vsockd serving many VMs needs far more
// descriptors than the usual soft limit of 1024 (64 VMs with 1,000 idle connections each:
// ~65,000). Raising the soft limit up to the hard one needs no privilege; the hard limit
// stays the administrator's (LimitNOFILE=, ulimit -Hn). vsockd uses epoll, never select(),
// so descriptors above 1023 are fine.
void RaiseFdLimit() {
  struct rlimit rl;
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  const rlim_t old = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) {
    LOG_WARN("cannot raise the open-file limit from {} to {}: {}", old, rl.rlim_max,
             std::strerror(errno));
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace vsockd;
  daemon::ParseOutcome parsed = daemon::ParseCommandLine(argc, argv);
  if (!parsed.run) {
    std::fputs(parsed.output.c_str(), parsed.exit_code == 0 ? stdout : stderr);
    return parsed.exit_code;
  }
  SetLogTag("vsockd");
  SetLogLevel(parsed.options.log_level);
  RaiseFdLimit();
  // Writes to host sockets use MSG_NOSIGNAL, but a peer closing under a plain write() must
  // never kill the daemon.
  ::signal(SIGPIPE, SIG_IGN);

  auto d = daemon::Daemon::Create(parsed.options, /*handle_signals=*/true);
  if (!d.ok()) {
    LOG_ERROR("{}", d.error().ToString());
    return 1;  // --ready-fd closes with the process, without its line: "failed"
  }
  // Every socket listens now (Create): a connect queues until the workers run.
  if (Status st = daemon::SignalReadyFd(parsed.options.ready_fd); !st.ok()) {
    LOG_WARN("{}", st.error().ToString());
  }
  if (Status st = daemon::NotifySystemd("READY=1"); !st.ok()) LOG_WARN("{}", st.error().ToString());
  (*d)->Run();
  if (Status st = daemon::NotifySystemd("STOPPING=1"); !st.ok()) {
    LOG_WARN("{}", st.error().ToString());
  }
  d->reset();  // removes the sockets before we report
  LOG_INFO("stopped");
  return 0;
}
