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
//
// Taking a session over (vsockd restarting under a running VM): Snapshot() describes the
// session (SessionState, with the descriptors it needs); SetSessionObserver() says when that
// changed, so a keeper can hold a copy; Release() lets go of the session without the frontend
// noticing; Resume() serves a session from a kept state, on the same connection.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"
#include "vhost_user/message.h"
#include "vhost_user/session_state.h"
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
  // The frontend's socket (-1 when not connected), for a keeper to hold a copy.
  int connection_fd() const { return conn_.get(); }
  // Ends the current session as if the frontend had gone away (no-op when none).
  void Disconnect();

  // The current session: its state, and in *fds the descriptors SessionState's indices name
  // (borrowed: valid until the next message or the end of the session; a keeper dups them).
  // Only meaningful while connected().
  SessionState Snapshot(std::vector<int>* fds) const;
  // Called (on the loop's thread) after each request that may have changed the session
  // state, and when the session ends (connected() is false then).
  using SessionObserver = std::function<void(const Backend&)>;
  void SetSessionObserver(SessionObserver observer) { observer_ = std::move(observer); }
  // Lets go of the session without ending it: the rings are stopped for the device (which
  // then holds nothing of them) and every descriptor is closed, but the frontend sees nothing
  // as long as someone else holds the connection (a keeper, or the process that resumes it).
  // The device is not told FrontendGone. No-op when not connected.
  void Release();
  // Serves a session taken over from another backend: `connection` is the frontend's socket,
  // `state` and `fds` what Snapshot() gave (fds[i] for index i). The memory table is mapped,
  // the rings get their sizes, addresses, eventfds and enable state back, and a ring that was
  // running resumes at its used index in guest memory (SplitQueue::ResumeAtUsedIndex), so no
  // chain completed before is completed twice and none taken but not completed is lost. The
  // device sees SetAckedFeatures and QueueStarted (driver_reset false) as for a new session.
  // Fails (nothing kept) if the state does not fit this device or the memory cannot be mapped.
  Status Resume(Fd connection, const SessionState& state, std::vector<Fd> fds);

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
    bool running = false;         // QueueStarted was called and QueueStopped was not
    bool resume_at_used = false;  // Resume(): start at the used index in guest memory
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
  void NotifyObserver();
  // Watches the listener again once no frontend is connected.
  void ResumeAccepting();
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
  // The memory table as the frontend sent it, and a copy of each region's file (GuestMemory
  // closes its own after mapping): Snapshot() hands them to a keeper.
  std::vector<virtio::MemoryRegion> regions_;
  std::vector<Fd> region_fds_;
  SessionObserver observer_;
  std::vector<std::unique_ptr<Vring>> vrings_;  // stable addresses: devices keep &queue
  bool has_reply_ = false;
  Message reply_;
};

}  // namespace vsockd::vhost_user
