// DeviceGuestConnector: the production GuestConnector (and SiblingConnector), forwarding
// UnixBackend's host -> guest connects and SiblingRouter's guest -> guest connects to a
// vsock::Device.
//
// Role: the only place the host backend touches vsock::Device, kept header-only so that
// host_test (which uses a fake connector) does not need the device's implementation.
// Callers: the daemon's wiring. The device may be attached after construction because the
// device and the backend point at each other (the device needs the HostBackend at its
// construction); until then, connects fail with ENODEV.
// Threading: the device's event loop thread.
#pragma once

#include <cerrno>

#include "host/sibling_router.h"
#include "host/unix_backend.h"
#include "vsock/device.h"

namespace vsockd::host {

class DeviceGuestConnector : public GuestConnector, public SiblingConnector {
 public:
  explicit DeviceGuestConnector(vsock::Device* device = nullptr) : device_(device) {}

  void set_device(vsock::Device* device) { device_ = device; }

  Result<uint64_t> ConnectToGuest(uint32_t guest_port, Done done) override {
    if (device_ == nullptr) return MakeError(ENODEV, "no vsock device");
    return device_->ConnectToGuest(guest_port, std::move(done));
  }

  Result<uint64_t> ConnectToGuestFrom(uint64_t peer_cid, uint32_t peer_port, uint32_t guest_port,
                                      uint16_t type, Done done) override {
    if (device_ == nullptr) return MakeError(ENODEV, "no vsock device");
    return device_->ConnectToGuestFrom(peer_cid, peer_port, guest_port, std::move(done), type);
  }

  Result<uint64_t> ConnectToGuestOfType(uint32_t guest_port, uint16_t type, Done done) override {
    if (device_ == nullptr) return MakeError(ENODEV, "no vsock device");
    return device_->ConnectToGuest(guest_port, std::move(done), type);
  }

  void CancelConnectToGuest(uint64_t id) override {
    if (device_ != nullptr) device_->CancelConnectToGuest(id);
  }

 private:
  vsock::Device* device_;
};

}  // namespace vsockd::host
