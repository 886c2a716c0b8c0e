// Frontend: the client side of a vhost-user session (what QEMU does), as typed calls.
//
// Callers: vguest (our virtual guest drives vsockd through it), tests (including hostile
// ones, through SendRaw). Threading: one thread at a time; every call is a blocking
// request (and, where the protocol has one, a blocking wait for the reply, bounded by a
// receive timeout).
//
// Every reply is validated: flags exactly 0x5, the request code it answers, the exact
// size. With REPLY_ACK negotiated, SET_MEM_TABLE is sent with NEED_REPLY (as QEMU does)
// and the ack is checked; set_need_reply_all(true) does the same for every request without
// a reply of its own, which turns each into a synchronous call (tests use it to see a
// refusal).
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "vhost_user/message.h"
#include "vhost_user/protocol.h"
#include "virtio/guest_memory.h"

namespace vsockd::vhost_user {

class Frontend {
 public:
  // Connects to a backend's socket, retrying while it does not exist yet or refuses
  // (the backend may still be starting) until `timeout` has passed.
  static Result<Frontend> Connect(const std::string& path,
                                  std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // Wraps an already-connected socket (a socketpair end). Sets it blocking with a receive
  // timeout so a silent backend fails a call instead of hanging it.
  static Result<Frontend> FromFd(Fd fd);

  Frontend(Frontend&&) = default;
  Frontend& operator=(Frontend&&) = default;

  Result<uint64_t> GetFeatures();
  Status SetFeatures(uint64_t features);
  Result<uint64_t> GetProtocolFeatures();
  // Remembers the acked set: REPLY_ACK changes how later calls are sent.
  Status SetProtocolFeatures(uint64_t features);
  Status SetOwner();
  Status ResetOwner();
  Result<uint64_t> GetQueueNum();
  // Returns exactly `size` bytes of config space; a zero-size reply (the backend's error)
  // fails with EIO.
  Result<std::vector<uint8_t>> GetConfig(uint32_t offset, uint32_t size, uint32_t flags = 0);
  Status SetMemTable(std::span<const virtio::MemoryRegion> regions, std::span<const int> fds);
  Status SetVringNum(uint32_t index, uint32_t num);
  Status SetVringAddr(const vhost_vring_addr& addr);
  Status SetVringBase(uint32_t index, uint32_t base);
  // Stops the ring; returns where it stopped (the next avail index).
  Result<uint32_t> GetVringBase(uint32_t index);
  // fd < 0 sends the NOFD bit instead of an fd.
  Status SetVringKick(uint32_t index, int fd);
  Status SetVringCall(uint32_t index, int fd);
  Status SetVringErr(uint32_t index, int fd);
  Status SetVringEnable(uint32_t index, bool enable);

  // Sends bytes with no checks at all: `header` as given (its size field need not match
  // the payload), then `payload`, with `fds` attached. For hostile tests.
  Status SendRaw(const VhostUserHeader& header, std::span<const uint8_t> payload,
                 std::span<const int> fds = {});
  // Reads one message with only the generic framing checks (for tests after SendRaw).
  Result<Message> ReadRaw();

  void set_need_reply_all(bool on) { need_reply_all_ = on; }
  bool reply_ack() const {
    return (protocol_features_ & (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK)) != 0;
  }
  int fd() const { return sock_.get(); }

 private:
  explicit Frontend(Fd sock) : sock_(std::move(sock)) {}
  // Sends a request that has no reply of its own; waits for the ack when one is due.
  Status Send(uint32_t request, std::span<const uint8_t> payload, std::span<const int> fds = {},
              bool want_ack = false);
  // Sends a request and reads its reply, checking it (exact size when given).
  Result<Message> Call(uint32_t request, std::span<const uint8_t> payload,
                       std::optional<size_t> reply_size);
  Result<uint64_t> CallU64(uint32_t request);
  Status SetVringFile(uint32_t request, uint32_t index, int fd);

  Fd sock_;
  uint64_t protocol_features_ = 0;
  bool need_reply_all_ = false;
};

}  // namespace vsockd::vhost_user
