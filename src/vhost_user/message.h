// vhost-user message codec: one Message = 12-byte header + payload + SCM_RIGHTS fds.
//
// Role: ReadMessage/WriteMessage move messages over a connected AF_UNIX stream socket;
// ValidateRequest applies the per-request rules (exact payload size, fd count) to what a
// frontend sent, ValidateReply checks what a backend answered. Callers: Backend (device
// side), Frontend (vguest, tests), the backend fuzzer. Threading: stateless functions; a
// Message is a plain value.
//
// Everything read here comes from an untrusted peer: sizes and fd counts are checked before
// anything is interpreted, and every fd received is owned by the Message (closed unless
// the handler keeps it).
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "vhost_user/protocol.h"

namespace vsockd::vhost_user {

struct Message {
  uint32_t request = 0;
  uint32_t flags = 0;
  std::vector<uint8_t> payload;
  std::vector<Fd> fds;

  bool need_reply() const { return (flags & VHOST_USER_NEED_REPLY_MASK) != 0; }

  // Copies the payload into *out; false unless the payload is exactly sizeof(T).
  template <typename T>
  bool Get(T* out) const {
    static_assert(std::is_trivially_copyable_v<T>);
    if (payload.size() != sizeof(T)) return false;
    std::memcpy(out, payload.data(), sizeof(T));
    return true;
  }
  // Replaces the payload with the bytes of `body`.
  template <typename T>
  void Set(const T& body) {
    static_assert(std::is_trivially_copyable_v<T>);
    payload.resize(sizeof(T));
    std::memcpy(payload.data(), &body, sizeof(T));
  }
};

// Error code ReadMessage returns when the peer closed (or reset) the connection between
// two messages: the ordinary end of a session, not a protocol violation.
inline constexpr int kPeerClosed = ECONNRESET;

// Reads one message from a blocking stream socket: the header (which may arrive in pieces),
// then exactly `size` payload bytes, collecting at most kMaxFds fds. Checks what every
// message must satisfy: version 1, no reserved flag bits, size <= kMaxPayloadSize, at most
// kMaxFds fds. EOF before the first byte -> kPeerClosed; EOF or a receive timeout
// (SO_RCVTIMEO) inside a message -> EPROTO / ETIMEDOUT; violations -> EBADMSG.
Result<Message> ReadMessage(int sock);

// Per-request rules for a message a frontend sent to a backend: not a reply, the exact
// payload size the request has (variable-size requests: consistent with their own count
// fields), and the fd count it requires (SET_MEM_TABLE one per region, SET_VRING_KICK/CALL/
// ERR one unless the NOFD bit is set, ...). Requests we do not know only get the generic
// checks. Failures are EBADMSG: the frontend is broken or hostile.
Status ValidateRequest(const Message& msg);

// Checks a backend's reply: flags exactly 0x5, the same request code, and (when
// `expected_size` is given) exactly that payload size; replies never carry fds.
Status ValidateReply(const Message& msg, uint32_t request, std::optional<size_t> expected_size);

// Sends header + payload (one sendmsg, fds attached to it). Fails with EMSGSIZE above
// kMaxPayloadSize and EINVAL above kMaxFds.
Status WriteMessage(int sock, uint32_t request, uint32_t flags, std::span<const uint8_t> payload,
                    std::span<const int> fds = {});
// A backend reply: flags exactly 0x5, built from scratch (never echoes NEED_REPLY).
Status WriteReply(int sock, uint32_t request, std::span<const uint8_t> payload);
Status WriteReplyU64(int sock, uint32_t request, uint64_t value);

// For logs: "VHOST_USER_SET_VRING_NUM flags=0x1 size=8 fds=0".
std::string Describe(const Message& msg);

}  // namespace vsockd::vhost_user
