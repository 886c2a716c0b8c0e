// Daemon: vsockd's wiring of one VM: the event loop, the vsock device, the hybrid Unix-socket
// host backend, and the vhost-user backend QEMU attaches to.
//
// Role: everything main() does besides parsing flags, in a class so integration tests can run
// a daemon in-process (Create, Run on a thread, Stop from another).
// Callers: vsockd's main(), tests.
// Threading: Create() and the destructor on the thread that calls Run() (or while it is not
// running); Run() runs the loop on the calling thread until Stop(); Stop() from any thread or
// from a signal handler.
//
// Lifetime of the sockets: Create() listens on options.socket_path (vhost-user),
// options.uds_path (hybrid, when set) and "<options.run_dir>/cid_<CID>" (when run_dir is set;
// the directory is created if missing), replacing stale socket files; the destructor removes
// the files that are still the ones it created.
#pragma once

#include <sys/types.h>

#include <memory>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"
#include "daemon/options.h"

namespace vsockd::vsock {
class Device;
}
namespace vsockd::vhost_user {
class Backend;
}
namespace vsockd::host {
class DeviceGuestConnector;
}

namespace vsockd::daemon {

class DeviceView;

class Daemon {
 public:
  // handle_signals: turn SIGINT/SIGTERM into a clean Stop() through a signalfd in the loop.
  // The signals are blocked in the calling thread (call it before starting other threads,
  // which inherit the mask). Tests running daemons in-process leave it false.
  static Result<std::unique_ptr<Daemon>> Create(const Options& options,
                                                bool handle_signals = false);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Serves until Stop() (or a handled signal).
  void Run();
  // Thread-safe and async-signal-safe.
  void Stop();

  EventLoop* loop() { return loop_.get(); }
  vsock::Device* device() { return device_.get(); }
  const Options& options() const { return options_; }

 private:
  explicit Daemon(Options options);
  Status Init(bool handle_signals);
  void OnSignal();

  Options options_;
  std::unique_ptr<EventLoop> loop_;
  Fd signal_fd_;
  // Declared in construction order; the destructor tears down explicitly (see daemon.cc).
  std::unique_ptr<host::DeviceGuestConnector> connector_;
  std::unique_ptr<host::UnixBackend> host_;
  std::unique_ptr<vsock::Device> device_;
  std::unique_ptr<DeviceView> device_view_;
  std::unique_ptr<vhost_user::Backend> vhost_;
  bool socket_created_ = false;
  dev_t socket_dev_ = 0;
  ino_t socket_ino_ = 0;
};

}  // namespace vsockd::daemon
