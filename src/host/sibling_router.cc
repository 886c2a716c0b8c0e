#include "host/sibling_router.h"

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <functional>

#include "base/fd.h"
#include "base/log.h"
#include "vsock/packet.h"

namespace vsockd::host {

struct SiblingRouter::Vm {
  uint64_t cid = 0;
  std::vector<std::string> groups;
  EventLoop* loop = nullptr;
  // Used only on `loop`'s thread; null once unregistered (Unregister runs on that thread or
  // while the loop is stopped, so no lock is needed).
  SiblingConnector* connector = nullptr;
};

namespace {

// The caller's half of one sibling connect. Lives on the caller VM's loop thread; the target
// thread reaches it only through a weak_ptr posted back to that loop.
struct OpState {
  EventLoop* loop = nullptr;
  vsock::HostBackend::ConnectDone done;
  Fd fd;  // our end of the socketpair, handed to the device on success
  bool seqpacket = false;
  bool target_answered = false;  // the target's outcome came back (not our own timeout)
  EventLoop::TimerId timer = 0;

  void Finish(Status result) {
    if (timer != 0) {
      loop->CancelTimer(timer);
      timer = 0;
    }
    if (!done) return;
    auto d = std::move(done);
    done = nullptr;
    if (result.ok()) {
      // Device to device: each SEQPACKET record carries its message's flags (EOR).
      d(vsock::HostStream{std::move(fd), {}, /*message_flags=*/seqpacket});
    } else {
      fd.Reset();
      d(result.take_error());
    }
  }
};

// What the caller's and the target's threads share about one sibling connect.
struct TargetState {
  std::atomic<bool> cancelled{false};  // the caller gave up (set on the caller's thread)
  uint64_t connect_id = 0;             // the target device's connect; target thread only
};

class SiblingConnectOp : public vsock::PendingConnect {
 public:
  SiblingConnectOp(std::shared_ptr<OpState> state, std::shared_ptr<TargetState> shared)
      : state_(std::move(state)), shared_(std::move(shared)) {}
  ~SiblingConnectOp() override {
    const bool answered = state_->target_answered;
    shared_->cancelled.store(true);
    if (state_->timer != 0) state_->loop->CancelTimer(state_->timer);
    state_->timer = 0;
    state_->done = nullptr;
    // The caller gave up before an answer (its guest reset the connect, or its bound ran
    // out): the target's device drops its half-open connect now and resets its guest's
    // side, instead of letting its guest accept a connection nobody will use.
    if (!answered && cancel_target_) cancel_target_();
  }
  // Set once the connect was posted to a target: tells the target to drop its connect.
  void SetCancelTarget(std::function<void()> f) { cancel_target_ = std::move(f); }

 private:
  std::shared_ptr<OpState> state_;
  std::shared_ptr<TargetState> shared_;
  std::function<void()> cancel_target_;
};

// Arms `state`'s timer to finish with `result` (also the way an immediate refusal is
// delivered: never from inside ConnectToHost).
void FinishLater(const std::shared_ptr<OpState>& state, std::chrono::milliseconds delay,
                 Error error) {
  std::weak_ptr<OpState> weak = state;
  state->timer = state->loop->AddTimer(delay, [weak, error = std::move(error)] {
    auto s = weak.lock();
    if (!s) return;
    s->timer = 0;
    s->Finish(error);
  });
}

}  // namespace

Status SiblingRouter::Register(uint64_t cid, std::vector<std::string> groups, EventLoop* loop,
                               SiblingConnector* connector) {
  if (groups.empty()) return MakeError(EINVAL, "VM with CID {} has no group", cid);
  auto vm = std::make_shared<Vm>();
  vm->cid = cid;
  vm->groups = std::move(groups);
  vm->loop = loop;
  vm->connector = connector;
  std::lock_guard<std::mutex> lock(mu_);
  if (!vms_.emplace(cid, std::move(vm)).second) {
    return MakeError(EEXIST, "a VM with CID {} is already registered", cid);
  }
  return OkStatus();
}

void SiblingRouter::Unregister(uint64_t cid) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = vms_.find(cid);
  if (it == vms_.end()) return;
  it->second->connector = nullptr;
  vms_.erase(it);
}

std::shared_ptr<SiblingRouter::Vm> SiblingRouter::Find(uint64_t cid) const {
  auto it = vms_.find(cid);
  return it == vms_.end() ? nullptr : it->second;
}

bool SiblingRouter::MayConnect(uint64_t from, uint64_t to) const {
  std::lock_guard<std::mutex> lock(mu_);
  return MayConnectLocked(from, to);
}

bool SiblingRouter::MayConnectLocked(uint64_t from, uint64_t to) const {
  if (from == to) return false;
  auto a = Find(from);
  auto b = Find(to);
  if (!a || !b) return false;
  for (const auto& g : a->groups) {
    if (std::find(b->groups.begin(), b->groups.end(), g) != b->groups.end()) return true;
  }
  return false;
}

uint64_t SiblingRouter::routed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return routed_;
}

uint64_t SiblingRouter::refused() const {
  std::lock_guard<std::mutex> lock(mu_);
  return refused_;
}

std::unique_ptr<vsock::PendingConnect> SiblingRouter::Connect(
    EventLoop* loop, const vsock::ConnectionInfo& info, std::chrono::milliseconds timeout,
    vsock::HostBackend::ConnectDone done) {
  auto state = std::make_shared<OpState>();
  state->loop = loop;
  state->done = std::move(done);
  auto shared = std::make_shared<TargetState>();
  auto op = std::make_unique<SiblingConnectOp>(state, shared);

  std::shared_ptr<Vm> target;
  const bool seqpacket = info.type == vsock::VIRTIO_VSOCK_TYPE_SEQPACKET;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if ((seqpacket || info.type == vsock::VIRTIO_VSOCK_TYPE_STREAM) &&
        MayConnectLocked(info.guest_cid, info.host_cid)) {
      target = Find(info.host_cid);
    }
    if (target) {
      ++routed_;
    } else {
      ++refused_;
    }
  }
  if (!target) {
    // Unknown CID and "not in a common group" look the same to the guest (RST), as a missing
    // host listener does.
    LOG_DEBUG("sibling: cid {} port {} -> cid {} port {}: refused (no such VM in a common group)",
              info.guest_cid, info.guest_port, info.host_cid, info.host_port);
    FinishLater(state, std::chrono::milliseconds(0),
                MakeError(ECONNREFUSED, "CID {} is not a sibling of CID {}", info.host_cid,
                          info.guest_cid));
    return op;
  }

  // The bridge has the connection's type: a SEQPACKET socketpair keeps each message one
  // record from A's device to B's (both devices insist on SOCK_SEQPACKET for such a
  // connection, device.cc "SEQPACKET").
  int sv[2];
  if (::socketpair(AF_UNIX,
                   (seqpacket ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_CLOEXEC | SOCK_NONBLOCK, 0,
                   sv) != 0) {
    Error e = ErrnoError("socketpair for sibling connect");
    LOG_WARN("sibling: {}", e.ToString());
    FinishLater(state, std::chrono::milliseconds(0), std::move(e));
    return op;
  }
  state->fd = Fd(sv[0]);
  state->seqpacket = seqpacket;
  auto theirs = std::make_shared<Fd>(sv[1]);
  // The caller's own bound: normally the target's connect timeout answers first.
  FinishLater(state, timeout,
              MakeError(ETIMEDOUT, "CID {} port {} did not answer", info.host_cid, info.host_port));

  std::weak_ptr<OpState> weak = state;
  // Runs on the target's thread: posts the outcome back to the caller's loop.
  auto reply = [loop, weak](Status result) {
    loop->Post([weak, result]() mutable {
      if (auto s = weak.lock()) {
        s->target_answered = true;
        s->Finish(std::move(result));
      }
    });
  };
  const uint64_t peer_cid = info.guest_cid;
  const uint32_t peer_port = info.guest_port;
  const uint32_t guest_port = info.host_port;
  const uint16_t type = info.type;
  target->loop->Post([target, theirs, reply, shared, peer_cid, peer_port, guest_port, type] {
    if (shared->cancelled.load()) return;  // the caller gave up; `theirs` closes
    if (target->connector == nullptr) {
      reply(MakeError(ECONNRESET, "CID {} went away", target->cid));
      return;
    }
    auto id = target->connector->ConnectToGuestFrom(
        peer_cid, peer_port, guest_port, type,
        [theirs, reply, shared, type](Result<uint32_t> r) -> std::optional<vsock::HostStream> {
          if (!r.ok()) {
            reply(r.take_error());
            return std::nullopt;
          }
          if (shared->cancelled.load() || !theirs->valid()) return std::nullopt;  // device resets
          reply(OkStatus());
          return vsock::HostStream{std::move(*theirs),
                                   {},
                                   /*message_flags=*/type == vsock::VIRTIO_VSOCK_TYPE_SEQPACKET};
        });
    if (!id.ok()) {
      reply(id.take_error());
      return;
    }
    shared->connect_id = *id;
  });
  op->SetCancelTarget([target, shared] {
    target->loop->Post([target, shared] {
      if (shared->connect_id != 0 && target->connector != nullptr) {
        target->connector->CancelConnectToGuest(shared->connect_id);
      }
    });
  });
  return op;
}

std::unique_ptr<vsock::PendingConnect> RoutingBackend::ConnectToHost(
    const vsock::ConnectionInfo& info, ConnectDone done) {
  if (info.host_cid == vsock::VMADDR_CID_HOST) return host_->ConnectToHost(info, std::move(done));
  if (router_ != nullptr) return router_->Connect(loop_, info, sibling_timeout_, std::move(done));
  // No router: behave like a router that knows no siblings.
  static SiblingRouter empty;
  return empty.Connect(loop_, info, sibling_timeout_, std::move(done));
}

}  // namespace vsockd::host
