// Backend: the device side of a vhost-user session. It answers a frontend (QEMU's
// vhost-user-vsock-pci, or vguest) and drives a virtio::VirtioDevice: features, config
// space, guest memory, and the life of each vring (configured, kicked, enabled -> started;
// disabled or GET_VRING_BASE -> stopped).
//
// Callers: the daemon (one Backend per VM socket), tests, the fuzzer. Threading: everything
// runs on the EventLoop's thread; construct, Listen/Attach and destroy it there too (or
// before the loop runs / after it stopped). Destroying a Backend with a frontend attached
// ends that session like a disconnect (the device sees QueueStopped and FrontendGone).
//
// Sessions: one frontend at a time. While one is connected the listening socket is not
// watched (a second QEMU waits in the backlog); when the frontend goes away (EOF, error, or
// a malformed message) every queue is stopped, the device is told FrontendGone(), all
// session state is dropped (memory unmapped, fds closed) and the next frontend is accepted.
//
// Protocol choices (see docs/interop/vhost-user.rst and the project's reference notes):
// - GET_FEATURES offers the device's features | VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES;
//   GET_PROTOCOL_FEATURES offers exactly MQ | REPLY_ACK | CONFIG.
// - Rings start disabled if SET_FEATURES acked PROTOCOL_FEATURES (QEMU >= 7.2, which sends
//   SET_VRING_ENABLE), else they count as enabled (older QEMU never sends it).
// - A kick fd is required (SET_VRING_KICK with NOFD is refused: we do not poll rings).
// - Replies always carry flags 0x5 exactly.
// - Frontend input is untrusted: framing errors (bad header, size, fd count) end the
//   session; a well-formed but refused request gets a REPLY_ACK failure when asked for,
//   otherwise it is logged (rate-limited) and ignored.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"
#include "vhost_user/message.h"
#include "virtio/guest_memory.h"
#include "virtio/split_queue.h"
#include "virtio/virtio_device.h"

namespace vsockd::vhost_user {

// Protocol features this backend offers (and accepts).
inline constexpr uint64_t kBackendProtocolFeatures = (1ull << VHOST_USER_PROTOCOL_F_MQ) |
                                                     (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
                                                     (1ull << VHOST_USER_PROTOCOL_F_CONFIG);

class Backend {
 public:
  // Neither pointer is owned; both must outlive the Backend.
  Backend(EventLoop* loop, virtio::VirtioDevice* device);
  ~Backend();
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  // Listens on a Unix socket path (a stale socket file is replaced) and serves frontends
  // one after the other.
  Status Listen(const std::string& path);
  // Serves frontends from an already-listening Unix stream socket (socket activation:
  // systemd's LISTEN_FDS or an inherited descriptor). The socket file, if any, is not ours:
  // nothing is unlinked. The descriptor is made non-blocking. `name` is for the log.
  Status ListenOn(Fd listener, const std::string& name);
  // Serves an already-connected frontend (socketpair in tests, socket activation). Fails
  // with EBUSY while another frontend is connected. The socket is made blocking with
  // receive/send timeouts (a frontend stalling inside a message is dropped, not waited for).
  Status Attach(Fd connection);

  bool connected() const { return conn_.valid(); }
  // Ends the current session as if the frontend had gone away (no-op when none).
  void Disconnect();

  // Handles one decoded request as if it had been read from the connection; replies go to
  // the connection. An error means the session must end (the caller does it: see
  // Disconnect()). Public for the fuzzer and tests; needs an attached connection.
  Status HandleMessage(Message& msg);

  // Introspection for tests and logs.
  uint64_t acked_features() const { return acked_features_; }
  uint64_t acked_protocol_features() const { return protocol_features_; }
  uint64_t sessions() const { return sessions_; }
  // Sessions ended by a frontend's malformed or impossible message (not by its disconnect).
  uint64_t session_errors() const { return session_errors_; }
  // A vring's size as the frontend set it (0: not set, or no such vring) and whether it runs.
  uint32_t queue_size(uint32_t index) const {
    return index < vrings_.size() ? vrings_[index]->num : 0;
  }
  bool queue_running(uint32_t index) const {
    return index < vrings_.size() && vrings_[index]->running;
  }

 private:
  struct Vring {
    uint32_t num = 0;  // 0: SET_VRING_NUM not received
    bool addr_set = false;
    vhost_vring_addr addr{};
    uint16_t base = 0;  // next avail index to consume (SET_VRING_BASE, or where we stopped)
    Fd kick;
    Fd call;
    Fd err;
    enum class Enable { kUnset, kOn, kOff } enable = Enable::kUnset;
    bool running = false;  // QueueStarted was called and QueueStopped was not
    virtio::SplitQueue queue;
    // What the previous run looked like, to tell a driver reset from a pause.
    bool ran_before = false;
    uint64_t prev_desc = 0, prev_avail = 0, prev_used = 0;
    uint16_t prev_stop_idx = 0;
  };

  // Keeps `listener` and watches it while no frontend is connected.
  Status Watch(Fd listener);
  void OnAcceptable();
  void OnReadable(uint32_t events);
  void OnKick(uint32_t index, uint32_t events);
  void EndSession(const Error& why);
  void ResetSessionState();
  void ResetVring(uint32_t index, bool keep_history);

  // Dispatch. Each returns the request's outcome (a failure is acked or logged, not fatal),
  // except that replies are written by the caller from reply_.
  Status Dispatch(Message& msg);
  Status OnSetFeatures(const Message& msg);
  Status OnSetProtocolFeatures(const Message& msg);
  Status OnSetMemTable(Message& msg);
  Status OnSetVringNum(const Message& msg);
  Status OnSetVringAddr(const Message& msg);
  Status OnSetVringBase(const Message& msg);
  Status OnGetVringBase(const Message& msg);
  Status OnSetVringFile(Message& msg);
  Status OnSetVringEnable(const Message& msg);
  Status OnGetConfig(const Message& msg);

  Result<uint32_t> CheckIndex(uint32_t index) const;
  bool Enabled(const Vring& v) const;
  // Starts the ring if it has everything (memory, num, addr, kick) and is enabled.
  Status MaybeStart(uint32_t index);
  // Stops a running ring (QueueStopped), remembering where it stopped.
  void StopQueue(uint32_t index);
  void ForgetKick(uint32_t index);
  void SetReply(uint32_t request, std::span<const uint8_t> payload);
  template <typename T>
  void SetReplyValue(uint32_t request, const T& value) {
    SetReply(request,
             std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&value), sizeof value));
  }

  EventLoop* loop_;
  virtio::VirtioDevice* device_;
  Fd listener_;
  bool listener_watched_ = false;
  Fd conn_;
  uint64_t sessions_ = 0;
  uint64_t session_errors_ = 0;

  // Session state.
  uint64_t acked_features_ = 0;
  bool features_set_ = false;
  bool protocol_features_acked_ = false;  // bit 30 acked in SET_FEATURES
  uint64_t protocol_features_ = 0;
  std::shared_ptr<const virtio::GuestMemory> memory_;
  std::vector<std::unique_ptr<Vring>> vrings_;  // stable addresses: devices keep &queue
  bool has_reply_ = false;
  Message reply_;
};

}  // namespace vsockd::vhost_user
