#include "vsock/testing/fake_host_backend.h"

#include <sys/socket.h>

namespace vsockd::vsock::testing {
namespace {

class FakePending : public PendingConnect {
 public:
  FakePending(std::shared_ptr<bool> live, std::shared_ptr<size_t> cancelled)
      : live_(std::move(live)), cancelled_(std::move(cancelled)) {}
  ~FakePending() override {
    if (*live_) ++*cancelled_;
    *live_ = false;
  }

 private:
  std::shared_ptr<bool> live_;
  std::shared_ptr<size_t> cancelled_;
};

}  // namespace

std::unique_ptr<PendingConnect> FakeHostBackend::ConnectToHost(const ConnectionInfo& info,
                                                               ConnectDone done) {
  ++connect_calls_;
  infos_.push_back(info);
  auto live = std::make_shared<bool>(true);
  if (hold_) {
    held_.push_back(Held{info, std::move(done), live});
  } else {
    loop_->Defer([this, info, done = std::move(done), live] {
      if (!*live) return;
      *live = false;
      Complete(info, done);
    });
  }
  return std::make_unique<FakePending>(live, cancelled_);
}

void FakeHostBackend::ReleaseHeld() {
  std::deque<Held> held;
  held.swap(held_);
  for (auto& h : held) {
    if (!*h.live) continue;
    *h.live = false;
    Complete(h.info, h.done);
  }
}

void FakeHostBackend::Complete(const ConnectionInfo& info, const ConnectDone& done) {
  if (refuse_all_ || refused_.count(info.host_port) != 0) {
    done(MakeError(ECONNREFUSED, "fake connect to host port {}", info.host_port));
    return;
  }
  int sv[2];
  // A SEQPACKET connection always gets a SOCK_SEQPACKET pair (what a real backend must do).
  int type = info.type == VIRTIO_VSOCK_TYPE_SEQPACKET ? SOCK_SEQPACKET : socket_type_;
  if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) < 0) {
    done(ErrnoError("socketpair"));
    return;
  }
  if (device_sndbuf_ > 0) {
    ::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &device_sndbuf_, sizeof device_sndbuf_);
  }
  peers_[info.host_port].emplace_back(sv[1]);
  HostStream stream{Fd(sv[0]), std::move(prefix_)};
  prefix_.clear();
  done(std::move(stream));
}

Fd FakeHostBackend::TakePeer(uint32_t host_port) {
  auto it = peers_.find(host_port);
  if (it == peers_.end() || it->second.empty()) return Fd();
  Fd fd = std::move(it->second.front());
  it->second.pop_front();
  return fd;
}

}  // namespace vsockd::vsock::testing
