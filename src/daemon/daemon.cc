#include "daemon/daemon.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <future>
#include <system_error>
#include <thread>

#include "base/log.h"
#include "daemon/control.h"
#include "daemon/fd_budget.h"
#include "daemon/inherited_sockets.h"
#include "daemon/metrics.h"
#include "daemon/readiness.h"
#include "daemon/request_server.h"
#include "host/device_connector.h"
#include "host/sibling_router.h"
#include "host/unix_backend.h"
#include "vhost_user/backend.h"
#include "virtio/virtio_device.h"
#include "vsock/device.h"

namespace vsockd::daemon {

// What the vhost-user backend drives: the vsock device, with the queue-size cap of
// --queue-size (vsock::Device has no option for it; VirtioDevice::MaxQueueSize is how a
// transport learns it). Every other call is forwarded unchanged.
class DeviceView : public virtio::VirtioDevice {
 public:
  DeviceView(virtio::VirtioDevice* device, uint32_t max_queue_size)
      : device_(device), max_queue_size_(max_queue_size) {}

  uint64_t DeviceFeatures() const override { return device_->DeviceFeatures(); }
  uint32_t NumQueues() const override { return device_->NumQueues(); }
  uint32_t MaxQueueSize() const override { return max_queue_size_; }
  bool ReadConfig(uint32_t offset, std::span<uint8_t> out) const override {
    return device_->ReadConfig(offset, out);
  }
  void SetAckedFeatures(uint64_t features) override { device_->SetAckedFeatures(features); }
  void QueueStarted(uint32_t index, virtio::SplitQueue* queue, bool driver_reset) override {
    device_->QueueStarted(index, queue, driver_reset);
  }
  void QueueStopped(uint32_t index) override { device_->QueueStopped(index); }
  void QueueKicked(uint32_t index) override { device_->QueueKicked(index); }
  void FrontendGone() override { device_->FrontendGone(); }

 private:
  virtio::VirtioDevice* device_;
  uint32_t max_queue_size_;
};

namespace {

bool FileIdentity(const std::string& path, dev_t* dev, ino_t* ino) {
  if (path.empty() || path[0] == '@') return false;
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return false;
  *dev = st.st_dev;
  *ino = st.st_ino;
  return true;
}

}  // namespace

// One VM: device, host backends, vhost-user session, all on one worker's loop.
class Vm {
 public:
  // `inherited`: the daemon's socket-activation pool (may be null: paths only).
  Vm(VmOptions options, EventLoop* loop, host::SiblingRouter* router,
     InheritedSockets* inherited = nullptr, KeeperLink* keeper = nullptr)
      : options_(std::move(options)),
        loop_(loop),
        router_(router),
        inherited_(inherited),
        keeper_(keeper) {}

  // `kept`: the session a previous worker left for this CID (under a keeper), or null.
  Status Init(KeptSession* kept = nullptr) {
    // The device needs its HostBackend at construction and the backends reach the device
    // through the connector: the connector is created empty and pointed at the device after.
    connector_ = std::make_unique<host::DeviceGuestConnector>();
    host::UnixBackendOptions host_options;
    host_options.uds_path = options_.uds_path;
    host_options.ok_reply = options_.ok_reply;
    host_options.host_connect_timeout = options_.connect_timeout;
    host_options.seqpacket = options_.seqpacket;
    if (!options_.run_dir.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(options_.run_dir, ec);
      if (ec) {
        return MakeError(ec.value(), "run directory (--run-dir) '{}': {}", options_.run_dir,
                         ec.message());
      }
      host_options.listen_paths.push_back(
          fmt::format("{}/cid_{}", options_.run_dir, options_.guest_cid));
      host_options.host_path_prefixes.push_back(options_.run_dir + "/host_");
    }
    host_ = std::make_unique<host::UnixBackend>(loop_, connector_.get(), host_options);
    // The sibling's own connect timeout answers first; this only bounds a stuck target.
    routing_ = std::make_unique<host::RoutingBackend>(
        loop_, host_.get(), router_, options_.connect_timeout + std::chrono::seconds(1));

    vsock::DeviceOptions device_options;
    device_options.guest_cid = options_.guest_cid;
    device_options.buf_alloc = options_.tx_buffer_size;
    device_options.connect_timeout = options_.connect_timeout;
    device_options.offer_seqpacket = options_.seqpacket;
    device_options.budget = options_.budget;
    device_options.policy = options_.policy;
    device_ = std::make_unique<vsock::Device>(loop_, routing_.get(), device_options);
    connector_->set_device(device_.get());
    if (!options_.pcap.empty()) {
      vsock::CaptureOptions capture;
      capture.path = options_.pcap;
      if (Status s = device_->StartCapture(capture); !s.ok()) {
        return MakeError(s.error().code, "CID {}: pcap: {}", options_.guest_cid, s.error().context);
      }
    }

    device_view_ = std::make_unique<DeviceView>(device_.get(), options_.queue_size);
    vhost_ = std::make_unique<vhost_user::Backend>(loop_, device_view_.get());

    if (Status s = host_->Start(); !s.ok()) {
      return MakeError(s.error().code, "CID {}: hybrid socket (--uds-path / --run-dir): {}",
                       options_.guest_cid, s.error().context);
    }
    if (Status s = ListenVhostUser(); !s.ok()) {
      return MakeError(s.error().code, "CID {}: vhost-user socket (--socket): {}",
                       options_.guest_cid, s.error().context);
    }
    if (router_ != nullptr) {
      VSOCKD_RETURN_IF_ERROR(
          router_->Register(options_.guest_cid, options_.groups, loop_, connector_.get()));
      registered_ = true;
    }
    if (keeper_ != nullptr) {
      KeeperLink* link = keeper_;
      const uint64_t cid = options_.guest_cid;
      vhost_->SetSessionObserver(
          [link, cid](const vhost_user::Backend& b) { link->SendSession(cid, b); });
      device_->SetConnectionObserver([link, cid](const vsock::ConnectionInfo& info, bool opened) {
        link->SendConnection(cid, info, opened);
      });
    }
    if (kept != nullptr) {
      Status s = vhost_->Resume(std::move(kept->connection), kept->state, std::move(kept->fds));
      if (s.ok()) {
        LOG_INFO("CID {}: vhost-user session resumed after the restart", options_.guest_cid);
        device_->ResetGuestConnections(kept->connections);
      } else {
        // The frontend's socket closes with the kept state: QEMU sees a disconnect.
        LOG_ERROR("CID {}: cannot resume the vhost-user session: {}", options_.guest_cid,
                  s.error().ToString());
      }
    }

    std::string host_side;
    if (!options_.uds_path.empty()) {
      host_side = fmt::format("hybrid socket '{}' (guest -> host port X: '{}_X')",
                              options_.uds_path, options_.uds_path);
    }
    if (!options_.run_dir.empty()) {
      host_side += fmt::format(
          "{}run dir '{}' (host -> guest: 'cid_{}', guest -> host port X: "
          "'host_X'{})",
          host_side.empty() ? "" : ", ", options_.run_dir, options_.guest_cid,
          options_.uds_path.empty() ? "" : " if the hybrid path is missing");
    }
    LOG_INFO(
        "{} serving guest CID {}: vhost-user socket '{}', {}, buf_alloc {}, max queue size {}, "
        "groups {}",
        VersionString(), options_.guest_cid, options_.socket_path, host_side,
        options_.tx_buffer_size, options_.queue_size, fmt::join(options_.groups, "+"));
    return OkStatus();
  }

  const VmOptions& options() const { return options_; }
  vsock::Device* device() { return device_.get(); }

  // On the VM's worker thread (or while its loop does not run).
  VmStatus Report(bool with_connections) const {
    VmStatus st;
    st.cid = options_.guest_cid;
    st.socket_path = options_.socket_path;
    st.uds_path = options_.uds_path;
    st.run_dir = options_.run_dir;
    st.groups = options_.groups;
    st.buf_alloc = options_.tx_buffer_size;
    st.budget = options_.budget;
    st.policy = options_.policy;
    if (vhost_) {
      st.attached = vhost_->connected();
      st.sessions = vhost_->sessions();
      st.session_errors = vhost_->session_errors();
      st.acked_features = vhost_->acked_features();
      st.rx_queue_size = vhost_->queue_size(0);
      st.tx_queue_size = vhost_->queue_size(1);
      st.rx_running = vhost_->queue_running(0);
      st.tx_running = vhost_->queue_running(1);
    }
    if (device_) {
      st.seqpacket = device_->seqpacket_negotiated();
      st.stats = device_->stats();
      if (with_connections) st.connections = device_->Connections();
    }
    return st;
  }

  // Lets go of the session for the next worker (under a keeper): nothing ends for QEMU, and the
  // keeper hears nothing more from this VM (its connections stay listed for the next worker
  // to reset).
  void HandOver() {
    if (device_) device_->SetConnectionObserver(nullptr);
    if (vhost_) {
      vhost_->SetSessionObserver(nullptr);
      vhost_->Release();
    }
  }

  // New budgets and policy (Daemon::Reload); they apply to connections admitted from now on.
  void UpdateLimits(const VmOptions& updated) {
    options_.budget = updated.budget;
    options_.policy = updated.policy;
    options_.max_host_fds_explicit = updated.max_host_fds_explicit;
    if (device_) device_->UpdateLimits(options_.budget, options_.policy);
    LOG_INFO("CID {}: budgets and policy reloaded (new connections)", options_.guest_cid);
  }

  // The vhost-user socket: an inherited one (socket activation) when there is one for it,
  // else a socket file of our own (removed again in the destructor).
  Status ListenVhostUser() {
    auto spec = ParseSocketSpec(options_.socket_path);
    if (!spec.ok()) return spec.take_error();
    if (inherited_ != nullptr) {
      auto fd = inherited_->Find(*spec);
      if (!fd.ok()) return fd.take_error();
      if (fd->valid()) return vhost_->ListenOn(std::move(*fd), options_.socket_path);
    } else if (spec->kind != SocketSpec::Kind::kPath) {
      return MakeError(EINVAL, "'{}': no inherited sockets here", options_.socket_path);
    }
    VSOCKD_RETURN_IF_ERROR(vhost_->Listen(options_.socket_path));
    socket_created_ = FileIdentity(options_.socket_path, &socket_dev_, &socket_ino_);
    return OkStatus();
  }

  // On the VM's worker thread, or while its loop does not run.
  ~Vm() {
    // Siblings' posted connects find the VM gone from here on.
    if (registered_) router_->Unregister(options_.guest_cid);
    // Order matters: the vhost-user session first (it stops the queues and tells the device
    // the frontend is gone), then the host backend (it cancels its pending guest connects
    // through the still-living device), then the device (it drops its pending host connects,
    // which do not refer to the backend).
    vhost_.reset();
    if (socket_created_) {
      dev_t dev;
      ino_t ino;
      if (FileIdentity(options_.socket_path, &dev, &ino) && dev == socket_dev_ &&
          ino == socket_ino_) {
        ::unlink(options_.socket_path.c_str());
      }
    }
    device_view_.reset();
    if (host_) host_->Shutdown();
    device_.reset();
    routing_.reset();
    host_.reset();
    connector_.reset();
  }

 private:
  VmOptions options_;
  EventLoop* loop_;
  host::SiblingRouter* router_;
  InheritedSockets* inherited_;
  KeeperLink* keeper_;
  bool registered_ = false;
  std::unique_ptr<host::DeviceGuestConnector> connector_;
  std::unique_ptr<host::UnixBackend> host_;
  std::unique_ptr<host::RoutingBackend> routing_;
  std::unique_ptr<vsock::Device> device_;
  std::unique_ptr<DeviceView> device_view_;
  std::unique_ptr<vhost_user::Backend> vhost_;
  bool socket_created_ = false;
  dev_t socket_dev_ = 0;
  ino_t socket_ino_ = 0;
};

Result<std::unique_ptr<Daemon>> Daemon::Create(const Options& options, bool handle_signals,
                                               KeeperLink* keeper, KeptSessions* kept) {
  Options checked = options;
  if (checked.vms.empty()) checked.vms.push_back(static_cast<const VmOptions&>(options));
  // The single-VM form reports a bad CID as before ("guest CID 2 is reserved ...").
  if (options.vms.empty()) VSOCKD_RETURN_IF_ERROR(ValidateGuestCid(options.guest_cid));
  VSOCKD_RETURN_IF_ERROR(ValidateVms(checked.vms));
  std::unique_ptr<Daemon> daemon(new Daemon(std::move(checked)));
  daemon->keeper_ = keeper;
  VSOCKD_RETURN_IF_ERROR(daemon->Init(handle_signals, kept));
  return daemon;
}

Daemon::Daemon(Options options)
    : options_(std::move(options)), inherited_(std::make_unique<InheritedSockets>()) {}

Status Daemon::Init(bool handle_signals, KeptSessions* kept) {
  auto loop = EventLoop::Create();
  if (!loop.ok()) return loop.take_error();
  loop_ = std::move(*loop);
  // Socket activation: the vhost-user sockets systemd passed, if any.
  auto inherited = InheritedSockets::FromEnvironment();
  if (!inherited.ok()) {
    return MakeError(inherited.error().code, "socket activation: {}", inherited.error().context);
  }
  *inherited_ = std::move(*inherited);

  if (handle_signals) {
    // Blocked here, before any worker exists: the workers inherit the mask, so only the
    // control loop's signalfd sees SIGINT/SIGTERM.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    if (keeper_ != nullptr) sigaddset(&set, SIGUSR2);  // the keeper's "hand over"
    if (::pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) {
      return MakeError(EINVAL, "blocking SIGINT/SIGTERM/SIGHUP failed");
    }
    signal_fd_ = Fd(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!signal_fd_) return ErrnoError("signalfd");
    VSOCKD_RETURN_IF_ERROR(loop_->Add(signal_fd_.get(), EPOLLIN, [this](uint32_t) { OnSignal(); }));
  }

  size_t workers = options_.workers;
  if (workers == 0) workers = std::max(1u, std::thread::hardware_concurrency());
  // With a config file, VMs may come later (Reload): keep a worker per core for them.
  if (options_.config_path.empty()) workers = std::min(workers, options_.vms.size());
  for (size_t i = 0; i < workers; ++i) {
    auto worker_loop = EventLoop::Create();
    if (!worker_loop.ok()) return worker_loop.take_error();
    workers_.push_back(Worker{std::move(*worker_loop), {}});
  }
  router_ = std::make_unique<host::SiblingRouter>();
  for (size_t i = 0; i < options_.vms.size(); ++i) {
    auto vm = std::make_unique<Vm>(options_.vms[i], workers_[i % workers].loop.get(), router_.get(),
                                   inherited_.get(), keeper_);
    KeptSession* session = nullptr;
    if (kept != nullptr) {
      auto it = kept->find(options_.vms[i].guest_cid);
      if (it != kept->end()) session = &it->second;
    }
    Status s = vm->Init(session);
    // Destroyed (sockets removed) with the daemon on failure.
    vms_.push_back(VmSlot{std::move(vm), i % workers});
    if (!s.ok()) return s;
  }
  for (const std::string& unused : inherited_->Unused()) {
    LOG_WARN("socket activation: the socket {} systemd passed is no VM's socket: not served",
             unused);
  }
  VSOCKD_RETURN_IF_ERROR(StartControlAndMetrics());
  if (options_.vms.size() > 1) {
    LOG_INFO("{} VMs on {} worker thread{}", options_.vms.size(), workers, workers == 1 ? "" : "s");
  }
  return OkStatus();
}

Status Daemon::StartControlAndMetrics() {
  if (!options_.control_path.empty()) {
    auto fd = ListenEndpoint("unix:" + options_.control_path, 0600);
    if (!fd.ok()) {
      return MakeError(fd.error().code, "control socket (--control): {}", fd.error().context);
    }
    control_file_ = true;
    ControlHooks hooks{
        [this](bool with_connections) { return Snapshot(with_connections); },
        [this] { return Reload(); },
        [this](uint64_t cid, const std::string& action, const vsock::CaptureOptions& opts) {
          return Capture(cid, action, opts);
        },
        [this] { return RequestUpgrade(); }};
    control_ = std::make_unique<RequestServer>(
        loop_.get(), std::move(*fd),
        [hooks](std::string_view line) { return HandleControlRequest(line, hooks); },
        RequestServer::Options{});
    VSOCKD_RETURN_IF_ERROR(control_->Start());
    LOG_INFO("control socket '{}' (vsockctl --socket {})", options_.control_path,
             options_.control_path);
  }
  if (!options_.metrics_listen.empty()) {
    auto fd = ListenEndpoint(options_.metrics_listen, 0660);
    if (!fd.ok()) {
      return MakeError(fd.error().code, "metrics (--metrics-listen): {}", fd.error().context);
    }
    RequestServer::Options http;
    http.delimiter = "\r\n\r\n";
    http.close_after_reply = true;
    http.max_request = 8192;
    metrics_ = std::make_unique<RequestServer>(
        loop_.get(), std::move(*fd),
        [this](std::string_view request) {
          return HandleMetricsHttp(request, [this] { return RenderMetrics(Snapshot()); });
        },
        http);
    VSOCKD_RETURN_IF_ERROR(metrics_->Start());
    LOG_INFO("Prometheus metrics on {} (/metrics)", options_.metrics_listen);
  }
  return OkStatus();
}

Daemon::~Daemon() {
  // No worker runs here (Run() joined them): everything is torn down from this thread.
  control_.reset();
  metrics_.reset();
  if (control_file_) ::unlink(options_.control_path.c_str());
  vms_.clear();
  router_.reset();
  workers_.clear();
  if (signal_fd_) loop_->Remove(signal_fd_.get());
}

void Daemon::Run() {
  if (loop_->stopped()) return;
  for (auto& w : workers_) {
    EventLoop* l = w.loop.get();
    w.thread = std::thread([l] { l->Run(); });
  }
  workers_running_ = true;
  loop_->Run();
  for (auto& w : workers_) w.loop->Stop();
  for (auto& w : workers_) {
    if (w.thread.joinable()) w.thread.join();
  }
  workers_running_ = false;
}

void Daemon::RunOnWorker(size_t index, const std::function<void()>& fn) {
  if (!workers_running_) {
    fn();
    return;
  }
  // The workers stop only after the control loop (our caller) has returned, so the posted
  // call always runs.
  std::promise<void> done;
  workers_[index].loop->Post([&] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}

Status Daemon::AddVm(const VmOptions& options) {
  std::vector<size_t> load(workers_.size(), 0);
  for (const VmSlot& slot : vms_) ++load[slot.worker];
  const size_t worker =
      static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
  auto vm = std::make_unique<Vm>(options, workers_[worker].loop.get(), router_.get(),
                                 inherited_.get(), keeper_);
  Status s;
  RunOnWorker(worker, [&] {
    s = vm->Init();
    if (!s.ok()) vm.reset();  // removes what it created, on its thread
  });
  if (s.ok()) vms_.push_back(VmSlot{std::move(vm), worker});
  return s;
}

void Daemon::RemoveVm(size_t i) {
  VmSlot slot = std::move(vms_[i]);
  vms_.erase(vms_.begin() + static_cast<std::ptrdiff_t>(i));
  RunOnWorker(slot.worker, [&] { slot.vm.reset(); });
}

namespace {

// Whether two VMs differ in anything but their budgets and policy (Reload then restarts it).
bool SameVmExceptLimits(const VmOptions& a, const VmOptions& b) {
  return a.socket_path == b.socket_path && a.guest_cid == b.guest_cid && a.uds_path == b.uds_path &&
         a.run_dir == b.run_dir && a.tx_buffer_size == b.tx_buffer_size &&
         a.queue_size == b.queue_size && a.ok_reply == b.ok_reply &&
         a.connect_timeout == b.connect_timeout && a.groups == b.groups &&
         a.seqpacket == b.seqpacket;
}

bool SameLimits(const VmOptions& a, const VmOptions& b) {
  return a.budget == b.budget && a.policy == b.policy;
}

}  // namespace

Result<vsock::Device::CaptureStatus> Daemon::Capture(uint64_t cid, const std::string& action,
                                                     const vsock::CaptureOptions& options) {
  for (const VmSlot& slot : vms_) {
    if (slot.vm->options().guest_cid != cid) continue;
    Result<vsock::Device::CaptureStatus> result = MakeError(EINVAL, "unknown capture action");
    RunOnWorker(slot.worker, [&] {
      vsock::Device* device = slot.vm->device();
      if (action == "start") {
        Status s = device->StartCapture(options);
        result = s.ok() ? Result<vsock::Device::CaptureStatus>(device->capture_status())
                        : Result<vsock::Device::CaptureStatus>(s.error());
      } else if (action == "stop") {
        result = device->StopCapture();
      } else if (action == "status") {
        result = device->capture_status();
      }
    });
    return result;
  }
  return MakeError(ENOENT, "no VM with CID {}", cid);
}

DaemonStatus Daemon::Snapshot(bool with_connections) {
  DaemonStatus st;
  st.version = VersionString();
  st.uptime_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  st.workers = workers_.size();
  st.config_path = options_.config_path;
  st.reloads = reloads_;
  st.reload_failures = reload_failures_;
  for (const VmSlot& slot : vms_) {
    VmStatus vm;
    RunOnWorker(slot.worker, [&] { vm = slot.vm->Report(with_connections); });
    vm.worker = slot.worker;
    st.vms.push_back(std::move(vm));
  }
  std::sort(st.vms.begin(), st.vms.end(),
            [](const VmStatus& a, const VmStatus& b) { return a.cid < b.cid; });
  return st;
}

Status Daemon::Reload() {
  ++reloads_;
  Status s = ApplyConfigFile();
  if (!s.ok()) ++reload_failures_;
  return s;
}

Status Daemon::ApplyConfigFile() {
  if (options_.config_path.empty()) {
    return MakeError(EINVAL, "reload: vsockd was not started with --config, nothing to re-read");
  }
  auto loaded = LoadConfigFile(options_.config_path, options_);
  if (!loaded.ok()) {
    return MakeError(loaded.error().code, "reload: {}; nothing changed", loaded.error().context);
  }
  std::vector<VmOptions> next = std::move(*loaded);
  if (Status s = ValidateVms(next); !s.ok()) {
    return MakeError(s.error().code, "reload: {}: {}; nothing changed", options_.config_path,
                     s.error().context);
  }
  struct rlimit rl {};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  auto plan = PlanFdBudgets(rl.rlim_cur == RLIM_INFINITY ? UINT32_MAX : rl.rlim_cur, &next);
  if (!plan.ok()) {
    return MakeError(plan.error().code, "reload: {}; nothing changed", plan.error().context);
  }

  size_t removed = 0, restarted = 0, updated = 0, added = 0;
  std::vector<const VmOptions*> to_start;
  // Detach first: a restarted or new VM may reuse a path a detached one held.
  for (size_t i = vms_.size(); i-- > 0;) {
    const VmOptions& current = vms_[i].vm->options();
    auto it = std::find_if(next.begin(), next.end(),
                           [&](const VmOptions& n) { return n.guest_cid == current.guest_cid; });
    if (it == next.end()) {
      LOG_INFO("reload: CID {} is no longer configured: detaching it", current.guest_cid);
      RemoveVm(i);
      ++removed;
    } else if (!SameVmExceptLimits(current, *it)) {
      LOG_INFO("reload: CID {} changed: restarting it with its new settings", current.guest_cid);
      RemoveVm(i);
      to_start.push_back(&*it);
      ++restarted;
    } else if (!SameLimits(current, *it)) {
      RunOnWorker(vms_[i].worker, [&] { vms_[i].vm->UpdateLimits(*it); });
      ++updated;
    }
  }
  for (const VmOptions& n : next) {
    const bool running = std::any_of(vms_.begin(), vms_.end(), [&](const VmSlot& slot) {
      return slot.vm->options().guest_cid == n.guest_cid;
    });
    const bool restarting = std::find(to_start.begin(), to_start.end(), &n) != to_start.end();
    if (!running && !restarting) {
      to_start.push_back(&n);
      ++added;
    }
  }
  Status result;
  for (const VmOptions* n : to_start) {
    if (Status s = AddVm(*n); !s.ok()) {
      LOG_ERROR("reload: CID {} could not start: {}", n->guest_cid, s.error().ToString());
      if (result.ok())
        result = MakeError(s.error().code, "reload: CID {}: {}", n->guest_cid, s.error().context);
    }
  }
  options_.vms.clear();
  for (const VmSlot& slot : vms_) options_.vms.push_back(slot.vm->options());
  LOG_INFO("reload: {}: {} VM(s) now; {} added, {} removed, {} restarted, {} with new limits",
           options_.config_path, vms_.size(), added, removed, restarted, updated);
  return result;
}

void Daemon::Stop() { loop_->Stop(); }

Status Daemon::RequestUpgrade() {
  if (keeper_ == nullptr) {
    return MakeError(EPERM,
                     "vsockd runs without --keep-sessions: restarting it would take the VMs' "
                     "vsock devices away (start it with --keep-sessions to upgrade in place)");
  }
  // The keeper passes SIGUSR2 back to us (HandOver) and starts the binary again.
  if (::kill(::getppid(), SIGUSR2) != 0) return ErrnoError("signalling the session keeper");
  LOG_INFO("control: upgrade requested");
  return OkStatus();
}

void Daemon::HandOver() {
  LOG_INFO("received SIGUSR2: handing {} VMs' sessions over to the next worker", vms_.size());
  for (VmSlot& slot : vms_) {
    Vm* vm = slot.vm.get();
    RunOnWorker(slot.worker, [vm] { vm->HandOver(); });
  }
  handed_over_ = true;
  loop_->Stop();
}

void Daemon::OnSignal() {
  signalfd_siginfo info;
  for (;;) {
    ssize_t n = ::read(signal_fd_.get(), &info, sizeof info);
    if (n < 0 && errno == EINTR) continue;
    if (n != static_cast<ssize_t>(sizeof info)) return;
    if (info.ssi_signo == SIGUSR2) {
      HandOver();
      continue;
    }
    if (info.ssi_signo == SIGHUP) {
      LOG_INFO("received SIGHUP, reloading {}", options_.config_path);
      (void)NotifySystemd("RELOADING=1");
      if (Status s = Reload(); !s.ok()) LOG_ERROR("{}", s.error().ToString());
      (void)NotifySystemd("READY=1");
      continue;
    }
    LOG_INFO("received {}, shutting down", info.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
    loop_->Stop();
  }
}

}  // namespace vsockd::daemon
