#include "daemon/fd_budget.h"

#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/log.h"

namespace vsockd::daemon {

std::string FdPlan::Describe() const {
  return fmt::format(
      "open-file limit {}: {} reserved, {} in explicit max-host-fds, {} per VM "
      "for the others",
      limit, reserved, explicit_total, share);
}

Result<FdPlan> PlanFdBudgets(uint64_t nofile_limit, std::vector<VmOptions>* vms) {
  FdPlan plan;
  plan.limit = nofile_limit;
  plan.reserved = kFdReserveBase + kFdReservePerVm * vms->size();
  uint64_t implicit_vms = 0;
  for (const VmOptions& vm : *vms) {
    if (vm.max_host_fds_explicit) {
      plan.explicit_total += vm.budget.max_host_fds;
    } else {
      ++implicit_vms;
    }
  }
  const uint64_t needed = plan.reserved + plan.explicit_total + kFdMinShare * implicit_vms;
  if (needed > nofile_limit) {
    return MakeError(EMFILE,
                     "the VMs' budgets need {} open files ({} reserved for {} VM(s), {} in "
                     "explicit max-host-fds, {} for VMs without one) but the open-file limit is "
                     "{}: raise it (systemd LimitNOFILE=, ulimit -Hn) or lower max-host-fds",
                     needed, plan.reserved, vms->size(), plan.explicit_total,
                     kFdMinShare * implicit_vms, nofile_limit);
  }
  if (implicit_vms > 0) {
    plan.share = (nofile_limit - plan.reserved - plan.explicit_total) / implicit_vms;
    for (VmOptions& vm : *vms) {
      if (!vm.max_host_fds_explicit) {
        vm.budget.max_host_fds =
            static_cast<uint32_t>(std::min<uint64_t>(vm.budget.max_host_fds, plan.share));
      }
    }
  }
  return plan;
}

Result<FdPlan> ApplyFdBudgets(std::vector<VmOptions>* vms) {
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return ErrnoError("getrlimit(RLIMIT_NOFILE)");
  // Raising the soft limit to the hard one needs no privilege; the hard limit stays the
  // administrator's. vsockd uses epoll, never select(), so descriptors above 1023 are fine.
  if (rl.rlim_cur < rl.rlim_max) {
    const rlim_t old = rl.rlim_cur;
    struct rlimit up = rl;
    up.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &up) == 0) {
      rl = up;
    } else {
      LOG_WARN("cannot raise the open-file limit from {} to {}: {}", old, rl.rlim_max,
               std::strerror(errno));
    }
  }
  const uint64_t limit = rl.rlim_cur == RLIM_INFINITY ? UINT32_MAX : rl.rlim_cur;
  return PlanFdBudgets(limit, vms);
}

}  // namespace vsockd::daemon
