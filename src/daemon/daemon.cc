#include "daemon/daemon.h"

#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <system_error>

#include "base/log.h"
#include "host/device_connector.h"
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

Result<std::unique_ptr<Daemon>> Daemon::Create(const Options& options, bool handle_signals) {
  VSOCKD_RETURN_IF_ERROR(ValidateGuestCid(options.guest_cid));
  std::unique_ptr<Daemon> daemon(new Daemon(options));
  VSOCKD_RETURN_IF_ERROR(daemon->Init(handle_signals));
  return daemon;
}

Daemon::Daemon(Options options) : options_(std::move(options)) {}

Status Daemon::Init(bool handle_signals) {
  auto loop = EventLoop::Create();
  if (!loop.ok()) return loop.take_error();
  loop_ = std::move(*loop);

  if (handle_signals) {
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

  // The device needs its HostBackend at construction and the backend reaches the device
  // through the connector: the connector is created empty and pointed at the device after.
  connector_ = std::make_unique<host::DeviceGuestConnector>();
  host::UnixBackendOptions host_options;
  host_options.uds_path = options_.uds_path;
  host_options.ok_reply = options_.ok_reply;
  host_options.host_connect_timeout = options_.connect_timeout;
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
  host_ = std::make_unique<host::UnixBackend>(loop_.get(), connector_.get(), host_options);

  vsock::DeviceOptions device_options;
  device_options.guest_cid = options_.guest_cid;
  device_options.buf_alloc = options_.tx_buffer_size;
  device_options.connect_timeout = options_.connect_timeout;
  device_ = std::make_unique<vsock::Device>(loop_.get(), host_.get(), device_options);
  connector_->set_device(device_.get());

  device_view_ = std::make_unique<DeviceView>(device_.get(), options_.queue_size);
  vhost_ = std::make_unique<vhost_user::Backend>(loop_.get(), device_view_.get());

  if (Status s = host_->Start(); !s.ok()) {
    return MakeError(s.error().code, "hybrid socket (--uds-path / --run-dir): {}",
                     s.error().ToString());
  }
  if (Status s = vhost_->Listen(options_.socket_path); !s.ok()) {
    return MakeError(s.error().code, "vhost-user socket (--socket): {}", s.error().ToString());
  }
  socket_created_ = FileIdentity(options_.socket_path, &socket_dev_, &socket_ino_);

  std::string host_side;
  if (!options_.uds_path.empty()) {
    host_side = fmt::format("hybrid socket '{}' (guest -> host port X: '{}_X')", options_.uds_path,
                            options_.uds_path);
  }
  if (!options_.run_dir.empty()) {
    host_side += fmt::format(
        "{}run dir '{}' (host -> guest: 'cid_{}', guest -> host port X: "
        "'host_X'{})",
        host_side.empty() ? "" : ", ", options_.run_dir, options_.guest_cid,
        options_.uds_path.empty() ? "" : " if the hybrid path is missing");
  }
  LOG_INFO("{} serving guest CID {}: vhost-user socket '{}', {}, buf_alloc {}, max queue size {}",
           VersionString(), options_.guest_cid, options_.socket_path, host_side,
           options_.tx_buffer_size, options_.queue_size);
  return OkStatus();
}

Daemon::~Daemon() {
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
  host_.reset();
  device_.reset();
  connector_.reset();
  if (signal_fd_) loop_->Remove(signal_fd_.get());
}

void Daemon::Run() { loop_->Run(); }

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
