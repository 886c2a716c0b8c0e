// vsockd: userspace virtio-vsock device (vhost-user backend) bridging guest vsock
// connections to host Unix sockets. See `vsockd --help` and docs/DESIGN.md.
#include <fcntl.h>
#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "base/log.h"
#include "daemon/daemon.h"
#include "daemon/fd_budget.h"
#include "daemon/options.h"
#include "daemon/readiness.h"
#include "daemon/session_keeper.h"

int main(int argc, char** argv) {
  using namespace vsockd;
  daemon::ParseOutcome parsed = daemon::ParseCommandLine(argc, argv);
  if (!parsed.run) {
    std::fputs(parsed.output.c_str(), parsed.exit_code == 0 ? stdout : stderr);
    return parsed.exit_code;
  }
  SetLogLevel(parsed.options.log_level);
  // --keep-sessions: this process becomes the session keeper, and runs the daemon itself as
  // its worker (this binary again, with --keeper-fd; daemon/session_keeper.h).
  if (parsed.options.keep_sessions && parsed.options.keeper_fd < 0) {
    return daemon::RunKeeper(argc, argv, parsed.options.ready_fd);
  }
  SetLogTag("vsockd");
  // Every guest connection holds a host socket: divide the open-file limit among the VMs so
  // that one guest cannot take the descriptors the others need (daemon/fd_budget.h).
  auto fd_plan = daemon::ApplyFdBudgets(&parsed.options.vms);
  if (!fd_plan.ok()) {
    std::fprintf(stderr, "vsockd: error: %s\n", fd_plan.error().context.c_str());
    return 2;
  }
  LOG_INFO("{}", fd_plan->Describe());
  // Writes to host sockets use MSG_NOSIGNAL, but a peer closing under a plain write() must
  // never kill the daemon.
  ::signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<daemon::KeeperLink> keeper;
  daemon::KeptSessions kept;
  if (parsed.options.keeper_fd >= 0) {
    keeper = std::make_unique<daemon::KeeperLink>(Fd(parsed.options.keeper_fd));
    ::fcntl(parsed.options.keeper_fd, F_SETFD, FD_CLOEXEC);
    auto received = keeper->ReceiveKept();
    if (!received.ok()) {
      LOG_ERROR("session keeper: {}", received.error().ToString());
      return 1;
    }
    kept = std::move(*received);
  }
  auto d = daemon::Daemon::Create(parsed.options, /*handle_signals=*/true, keeper.get(), &kept);
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
  const bool handed_over = (*d)->handed_over();
  d->reset();  // removes the sockets before we report
  if (handed_over) {
    LOG_INFO("stopped: sessions handed over");
    return daemon::kExitHandover;
  }
  LOG_INFO("stopped");
  return 0;
}
