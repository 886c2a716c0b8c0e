// Daemon: vsockd's wiring: for every VM a vsock device, its hybrid Unix-socket host backend
// and the vhost-user backend QEMU attaches to; the sibling router between VMs; the threads.
//
// Role: everything main() does besides parsing flags, in a class so integration tests can run
// a daemon in-process (Create, Run on a thread, Stop from another).
// Callers: vsockd's main(), tests.
//
// Threading: each VM (vhost-user session + device + host backends) lives on one worker
// thread's EventLoop; VMs are spread over `workers` threads (VM i on worker i % workers), so a
// VM never needs a lock. The thread that calls Run() runs the control loop: signals and
// Stop() only. The only cross-thread traffic is guest <-> guest connects (SiblingRouter posts
// them to the target VM's loop, and the result back) and Stop/shutdown. Create() and the
// destructor run on the thread that calls Run() while no worker runs: Run() starts the workers
// and joins them before it returns, so objects of a VM are only touched by its worker while
// Run() runs, and by the owning thread otherwise.
//
// Lifetime of the sockets: Create() listens, for every VM, on its socket_path (vhost-user),
// uds_path (hybrid, when set) and "<run_dir>/cid_<CID>" (when run_dir is set; the directory
// is created if missing), replacing stale socket files; on failure, or in the destructor,
// every file that is still the one it created is removed. A vhost-user socket given as fd:N
// or systemd:NAME, or passed by systemd (LISTEN_FDS) bound to the VM's socket path, is served
// as it is and never removed (daemon/inherited_sockets.h).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"
#include "daemon/options.h"
#include "daemon/session_keeper.h"
#include "daemon/status.h"
#include "vsock/device.h"

namespace vsockd::vsock {
class Device;
}
namespace vsockd::vhost_user {
class Backend;
}
namespace vsockd::host {
class SiblingRouter;
}

namespace vsockd::daemon {

class Vm;
class RequestServer;
class InheritedSockets;

class Daemon {
 public:
  // handle_signals: turn SIGINT/SIGTERM into a clean Stop() through a signalfd in the loop.
  // The signals are blocked in the calling thread (call it before starting other threads,
  // which inherit the mask). Tests running daemons in-process leave it false.
  // keeper: under `--keep-sessions`, the link to the session keeper (not owned; outlives the
  // daemon): every VM reports its session and connections to it, SIGUSR2 hands the sessions
  // over (handed_over()). kept: the sessions a previous worker left, resumed by the VMs of
  // the same CID (taken from the map).
  static Result<std::unique_ptr<Daemon>> Create(const Options& options, bool handle_signals = false,
                                                KeeperLink* keeper = nullptr,
                                                KeptSessions* kept = nullptr);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Serves until Stop() (or a handled signal): starts the workers, runs the control loop,
  // then stops and joins the workers.
  void Run();
  // Thread-safe and async-signal-safe.
  void Stop();

  // Reads the --config file again and applies it (SIGHUP calls it; so may a control
  // interface). VMs are matched by CID:
  //  - a VM no longer in the file is detached: its guest's connections are reset (host peers
  //    see EOF), its socket files removed;
  //  - a VM new in the file starts listening (on the least loaded worker);
  //  - a VM whose budgets or policy changed keeps running; the new values apply to new
  //    connections (open ones keep what they were admitted with);
  //  - a VM any of whose other keys changed (sockets, paths, buffer sizes, groups...) is
  //    detached and started again with them: its guest sees a device reset;
  //  - every other VM is not touched (its transfers go on byte-exact).
  // A file that does not parse or validate, or whose budgets do not fit the open-file limit,
  // changes nothing (the error says why). A new VM that cannot start (say, its socket's
  // directory is missing) is reported and left out; the rest of the file applies.
  // Thread: the control loop's (the one that calls Run()), or before Run().
  Status Reload();

  // What every VM is doing, copied on each VM's worker (no lock on the data path).
  // Thread: the control loop's, or before Run().
  DaemonStatus Snapshot(bool with_connections = false);

  // Starts, stops or reports a packet capture of VM `cid` (action "start", "stop",
  // "status"), on its worker. Thread: the control loop's.
  Result<vsock::Device::CaptureStatus> Capture(uint64_t cid, const std::string& action,
                                               const vsock::CaptureOptions& options);

  // Every VM let go of its session for the next worker (SIGUSR2 under a keeper): exit with
  // kExitHandover.
  bool handed_over() const { return handed_over_; }

  // The control loop (signals).
  EventLoop* loop() { return loop_.get(); }
  size_t vm_count() const { return vms_.size(); }
  size_t worker_count() const { return workers_.size(); }
  const Options& options() const { return options_; }

 private:
  explicit Daemon(Options options);
  Status Init(bool handle_signals, KeptSessions* kept);
  // SIGUSR2 under a keeper: every VM releases its session, then the daemon stops.
  void HandOver();
  // vsockctl upgrade: asks the keeper to upgrade (SIGUSR2); EPERM without a keeper.
  Status RequestUpgrade();
  void OnSignal();
  // Runs `fn` on worker `index`'s thread and waits for it (directly when no worker runs).
  void RunOnWorker(size_t index, const std::function<void()>& fn);
  // Creates and starts a VM on the least loaded worker; kept in vms_ only if it started.
  Status AddVm(const VmOptions& vm);
  // Detaches vms_[i] on its worker and forgets it.
  void RemoveVm(size_t i);
  // Reload() without its counting.
  Status ApplyConfigFile();
  Status StartControlAndMetrics();

  struct Worker {
    std::unique_ptr<EventLoop> loop;
    std::thread thread;
  };

  Options options_;
  std::unique_ptr<EventLoop> loop_;  // control loop
  Fd signal_fd_;
  // Socket activation's listening sockets (daemon/inherited_sockets.h); VMs take duplicates.
  std::unique_ptr<InheritedSockets> inherited_;
  // Destroyed in reverse: VMs first (they unregister from the router and use their worker's
  // loop), then the router, then the workers' loops.
  std::vector<Worker> workers_;
  std::unique_ptr<host::SiblingRouter> router_;
  struct VmSlot {
    std::unique_ptr<Vm> vm;
    size_t worker = 0;
  };
  std::vector<VmSlot> vms_;
  bool workers_running_ = false;  // between Run()'s start of the workers and their join
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  uint64_t reloads_ = 0;
  uint64_t reload_failures_ = 0;
  // On the control loop; destroyed before it.
  std::unique_ptr<RequestServer> control_;
  std::unique_ptr<RequestServer> metrics_;
  bool control_file_ = false;  // we created options_.control_path
  KeeperLink* keeper_ = nullptr;
  bool handed_over_ = false;
};

}  // namespace vsockd::daemon
