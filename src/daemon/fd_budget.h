// How the process's open-file limit is divided among the VMs, so that no VM can use up the
// descriptors the others need.
//
// Role: every guest connection holds one host socket, so descriptors are the first thing a
// hostile guest exhausts (it took the whole limit in one second before budgets existed). At
// start, vsockd raises its soft RLIMIT_NOFILE to the hard limit and plans:
//   available = limit - kFdReserveBase - kFdReservePerVm * VMs
//   - VMs with max-host-fds given (a --vm key, the config, or --max-host-fds) keep it; their
//     sum must fit in `available`, or vsockd refuses to start and says by how much;
//   - every other VM gets min(its max-host-fds default, what is left / their number), at least
//     kFdMinShare, or vsockd refuses to start.
// The reserve covers the daemon's own descriptors (epoll, signalfd, eventfds, logs) and each
// VM's fixed ones (vhost-user listener and session, kick/call eventfds, memory regions while
// mapping, hybrid listeners, pending accepts). docs/SECURITY.md states the rule for users.
// Callers: vsockd's main() (ApplyFdBudgets), tests (PlanFdBudgets). Threading: start-up only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/result.h"
#include "daemon/options.h"

namespace vsockd::daemon {

inline constexpr uint64_t kFdReserveBase = 64;
inline constexpr uint64_t kFdReservePerVm = 32;
inline constexpr uint64_t kFdMinShare = 16;

struct FdPlan {
  uint64_t limit = 0;           // the open-file limit planned for
  uint64_t reserved = 0;        // kept for the daemon and the VMs' fixed descriptors
  uint64_t explicit_total = 0;  // sum of the VMs' explicit max-host-fds
  uint64_t share = 0;           // what each VM without an explicit budget may have (0: none)
  std::string Describe() const;
};

// Fits the VMs' max-host-fds into `nofile_limit` (the rule above), lowering the implicit ones.
// EMFILE with the figures and what to change when the explicit budgets do not fit.
Result<FdPlan> PlanFdBudgets(uint64_t nofile_limit, std::vector<VmOptions>* vms);

// Raises the soft RLIMIT_NOFILE to the hard limit, then PlanFdBudgets with it.
Result<FdPlan> ApplyFdBudgets(std::vector<VmOptions>* vms);

}  // namespace vsockd::daemon
