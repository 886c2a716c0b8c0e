#include "daemon/daemon.h"

#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <system_error>
#include <thread>

#include "base/log.h"
#include "daemon/inherited_sockets.h"
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
     InheritedSockets* inherited = nullptr)
      : options_(std::move(options)), loop_(loop), router_(router), inherited_(inherited) {}

  Status Init() {
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
    device_ = std::make_unique<vsock::Device>(loop_, routing_.get(), device_options);
    connector_->set_device(device_.get());

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

Result<std::unique_ptr<Daemon>> Daemon::Create(const Options& options, bool handle_signals) {
  Options checked = options;
  if (checked.vms.empty()) checked.vms.push_back(static_cast<const VmOptions&>(options));
  // The single-VM form reports a bad CID as before ("guest CID 2 is reserved ...").
  if (options.vms.empty()) VSOCKD_RETURN_IF_ERROR(ValidateGuestCid(options.guest_cid));
  VSOCKD_RETURN_IF_ERROR(ValidateVms(checked.vms));
  std::unique_ptr<Daemon> daemon(new Daemon(std::move(checked)));
  VSOCKD_RETURN_IF_ERROR(daemon->Init(handle_signals));
  return daemon;
}

Daemon::Daemon(Options options)
    : options_(std::move(options)), inherited_(std::make_unique<InheritedSockets>()) {}

Status Daemon::Init(bool handle_signals) {
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
    if (::pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) {
      return MakeError(EINVAL, "blocking SIGINT/SIGTERM failed");
    }
    signal_fd_ = Fd(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!signal_fd_) return ErrnoError("signalfd");
    VSOCKD_RETURN_IF_ERROR(loop_->Add(signal_fd_.get(), EPOLLIN, [this](uint32_t) { OnSignal(); }));
  }

  size_t workers = options_.workers;
  if (workers == 0) workers = std::max(1u, std::thread::hardware_concurrency());
  workers = std::min(workers, options_.vms.size());
  for (size_t i = 0; i < workers; ++i) {
    auto worker_loop = EventLoop::Create();
    if (!worker_loop.ok()) return worker_loop.take_error();
    workers_.push_back(Worker{std::move(*worker_loop), {}});
  }
  router_ = std::make_unique<host::SiblingRouter>();
  for (size_t i = 0; i < options_.vms.size(); ++i) {
    auto vm = std::make_unique<Vm>(options_.vms[i], workers_[i % workers].loop.get(), router_.get(),
                                   inherited_.get());
    Status s = vm->Init();
    vms_.push_back(std::move(vm));  // destroyed (sockets removed) with the daemon on failure
    if (!s.ok()) return s;
  }
  for (const std::string& unused : inherited_->Unused()) {
    LOG_WARN("socket activation: the socket {} systemd passed is no VM's socket: not served",
             unused);
  }
  if (options_.vms.size() > 1) {
    LOG_INFO("{} VMs on {} worker thread{}", options_.vms.size(), workers, workers == 1 ? "" : "s");
  }
  return OkStatus();
}

Daemon::~Daemon() {
  // No worker runs here (Run() joined them): everything is torn down from this thread.
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
  loop_->Run();
  for (auto& w : workers_) w.loop->Stop();
  for (auto& w : workers_) {
    if (w.thread.joinable()) w.thread.join();
  }
}

void Daemon::Stop() { loop_->Stop(); }

void Daemon::OnSignal() {
  signalfd_siginfo info;
  for (;;) {
    ssize_t n = ::read(signal_fd_.get(), &info, sizeof info);
    if (n < 0 && errno == EINTR) continue;
    if (n != static_cast<ssize_t>(sizeof info)) return;
    LOG_INFO("received {}, shutting down", info.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
    loop_->Stop();
  }
}

}  // namespace vsockd::daemon
