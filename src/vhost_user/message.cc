#include "vhost_user/message.h"

#include <fmt/format.h>

#include "base/unix_socket.h"

namespace vsockd::vhost_user {

const char* RequestName(uint32_t request) {
  static constexpr const char* kNames[VHOST_USER_MAX] = {
      "VHOST_USER_NONE",
      "VHOST_USER_GET_FEATURES",
      "VHOST_USER_SET_FEATURES",
      "VHOST_USER_SET_OWNER",
      "VHOST_USER_RESET_OWNER",
      "VHOST_USER_SET_MEM_TABLE",
      "VHOST_USER_SET_LOG_BASE",
      "VHOST_USER_SET_LOG_FD",
      "VHOST_USER_SET_VRING_NUM",
      "VHOST_USER_SET_VRING_ADDR",
      "VHOST_USER_SET_VRING_BASE",
      "VHOST_USER_GET_VRING_BASE",
      "VHOST_USER_SET_VRING_KICK",
      "VHOST_USER_SET_VRING_CALL",
      "VHOST_USER_SET_VRING_ERR",
      "VHOST_USER_GET_PROTOCOL_FEATURES",
      "VHOST_USER_SET_PROTOCOL_FEATURES",
      "VHOST_USER_GET_QUEUE_NUM",
      "VHOST_USER_SET_VRING_ENABLE",
      "VHOST_USER_SEND_RARP",
      "VHOST_USER_NET_SET_MTU",
      "VHOST_USER_SET_SLAVE_REQ_FD",
      "VHOST_USER_IOTLB_MSG",
      "VHOST_USER_SET_VRING_ENDIAN",
      "VHOST_USER_GET_CONFIG",
      "VHOST_USER_SET_CONFIG",
      "VHOST_USER_CREATE_CRYPTO_SESSION",
      "VHOST_USER_CLOSE_CRYPTO_SESSION",
      "VHOST_USER_POSTCOPY_ADVISE",
      "VHOST_USER_POSTCOPY_LISTEN",
      "VHOST_USER_POSTCOPY_END",
      "VHOST_USER_GET_INFLIGHT_FD",
      "VHOST_USER_SET_INFLIGHT_FD",
      "VHOST_USER_GPU_SET_SOCKET",
      "VHOST_USER_RESET_DEVICE",
      "VHOST_USER_VRING_KICK",
      "VHOST_USER_GET_MAX_MEM_SLOTS",
      "VHOST_USER_ADD_MEM_REG",
      "VHOST_USER_REM_MEM_REG",
      "VHOST_USER_SET_STATUS",
      "VHOST_USER_GET_STATUS",
  };
  return request < VHOST_USER_MAX ? kNames[request] : "VHOST_USER_UNKNOWN";
}

namespace {

// Receives into buf until `len` bytes arrived, appending fds. `started` tells whether part
// of the message was already read (EOF then is a truncated message, not a clean close).
Status RecvFull(int sock, uint8_t* buf, size_t len, bool started, std::vector<Fd>* fds) {
  size_t got = 0;
  while (got < len) {
    // Never accept more than kMaxFds over the whole message.
    size_t room = fds->size() < kMaxFds ? kMaxFds - fds->size() : 0;
    std::vector<Fd> more;
    auto n = RecvWithFds(sock, buf + got, len - got, &more, room);
    for (auto& fd : more) fds->push_back(std::move(fd));
    if (!n.ok()) {
      const Error& e = n.error();
      if (e.code == EAGAIN || e.code == EWOULDBLOCK) {
        return MakeError(ETIMEDOUT, "vhost-user peer stalled inside a message");
      }
      if (e.code == ECONNRESET && !started && got == 0) {
        return MakeError(kPeerClosed, "vhost-user peer reset the connection");
      }
      if (e.code == EBADMSG) return MakeError(EBADMSG, "vhost-user message with too many fds");
      return n.take_error();
    }
    if (*n == 0) {
      if (!started && got == 0)
        return MakeError(kPeerClosed, "vhost-user peer closed the connection");
      return MakeError(EPROTO, "vhost-user peer closed the connection inside a message");
    }
    got += *n;
  }
  return OkStatus();
}

struct Rule {
  enum class Fds { kNone, kOne, kAny, kVringFile, kPerRegion, kOneOrNone };
  int size;  // exact payload size, or -1 when variable (checked separately)
  Fds fds;
};

// Rules for the requests whose layout we know. IDs not listed get only generic checks.
std::optional<Rule> RuleFor(uint32_t request) {
  using F = Rule::Fds;
  switch (request) {
    case VHOST_USER_GET_FEATURES:
    case VHOST_USER_SET_OWNER:
    case VHOST_USER_RESET_OWNER:
    case VHOST_USER_GET_PROTOCOL_FEATURES:
    case VHOST_USER_GET_QUEUE_NUM:
    case VHOST_USER_RESET_DEVICE:
    case VHOST_USER_GET_MAX_MEM_SLOTS:
    case VHOST_USER_GET_STATUS:
      return Rule{0, F::kNone};
    case VHOST_USER_SET_FEATURES:
    case VHOST_USER_SET_PROTOCOL_FEATURES:
    case VHOST_USER_SEND_RARP:
    case VHOST_USER_NET_SET_MTU:
    case VHOST_USER_SET_STATUS:
      return Rule{8, F::kNone};
    case VHOST_USER_SET_VRING_NUM:
    case VHOST_USER_SET_VRING_BASE:
    case VHOST_USER_GET_VRING_BASE:
    case VHOST_USER_SET_VRING_ENABLE:
    case VHOST_USER_SET_VRING_ENDIAN:
      return Rule{static_cast<int>(sizeof(vhost_vring_state)), F::kNone};
    case VHOST_USER_SET_VRING_ADDR:
      return Rule{static_cast<int>(sizeof(vhost_vring_addr)), F::kNone};
    case VHOST_USER_SET_VRING_KICK:
    case VHOST_USER_SET_VRING_CALL:
    case VHOST_USER_SET_VRING_ERR:
      return Rule{8, F::kVringFile};
    case VHOST_USER_SET_MEM_TABLE:
      return Rule{-1, F::kPerRegion};
    case VHOST_USER_SET_LOG_BASE:
      return Rule{static_cast<int>(sizeof(VhostUserLog)), F::kOne};
    case VHOST_USER_SET_LOG_FD:
    case VHOST_USER_SET_SLAVE_REQ_FD:
      return Rule{0, F::kOne};
    case VHOST_USER_GET_CONFIG:
    case VHOST_USER_SET_CONFIG:
      return Rule{-1, F::kNone};
    case VHOST_USER_ADD_MEM_REG:
      return Rule{static_cast<int>(sizeof(VhostUserMemRegMsg)), F::kOne};
    case VHOST_USER_REM_MEM_REG:
      // QEMU passes the region's fd along with REM_MEM_REG too; the spec does not require it.
      return Rule{static_cast<int>(sizeof(VhostUserMemRegMsg)), F::kOneOrNone};
    default:
      return std::nullopt;
  }
}

}  // namespace

Result<Message> ReadMessage(int sock) {
  VhostUserHeader hdr;
  Message msg;
  VSOCKD_RETURN_IF_ERROR(
      RecvFull(sock, reinterpret_cast<uint8_t*>(&hdr), sizeof hdr, /*started=*/false, &msg.fds));
  msg.request = hdr.request;
  msg.flags = hdr.flags;
  if ((hdr.flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION) {
    return MakeError(EBADMSG, "{}: bad vhost-user version in flags {:#x}", RequestName(hdr.request),
                     hdr.flags);
  }
  if ((hdr.flags & ~VHOST_USER_KNOWN_FLAGS) != 0) {
    return MakeError(EBADMSG, "{}: reserved flag bits set ({:#x})", RequestName(hdr.request),
                     hdr.flags);
  }
  if (hdr.size > kMaxPayloadSize) {
    return MakeError(EBADMSG, "{}: payload size {} exceeds {}", RequestName(hdr.request), hdr.size,
                     kMaxPayloadSize);
  }
  msg.payload.resize(hdr.size);
  if (hdr.size > 0) {
    VSOCKD_RETURN_IF_ERROR(
        RecvFull(sock, msg.payload.data(), hdr.size, /*started=*/true, &msg.fds));
  }
  return msg;
}

Status ValidateRequest(const Message& msg) {
  const char* name = RequestName(msg.request);
  if ((msg.flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION ||
      (msg.flags & ~VHOST_USER_KNOWN_FLAGS) != 0) {
    return MakeError(EBADMSG, "{}: bad flags {:#x}", name, msg.flags);
  }
  if ((msg.flags & VHOST_USER_REPLY_MASK) != 0) {
    return MakeError(EBADMSG, "{}: a request must not carry the reply flag", name);
  }
  if (msg.payload.size() > kMaxPayloadSize) {
    return MakeError(EBADMSG, "{}: payload size {} exceeds {}", name, msg.payload.size(),
                     kMaxPayloadSize);
  }
  if (msg.fds.size() > kMaxFds) {
    return MakeError(EBADMSG, "{}: {} fds (at most {})", name, msg.fds.size(), kMaxFds);
  }
  auto rule = RuleFor(msg.request);
  if (!rule) return OkStatus();  // unknown: the backend refuses it, the framing is fine

  size_t size = msg.payload.size();
  size_t expected_fds = 0;
  bool fds_any = false;
  if (rule->size >= 0 && size != static_cast<size_t>(rule->size)) {
    return MakeError(EBADMSG, "{}: payload size {} (must be {})", name, size, rule->size);
  }
  if (msg.request == VHOST_USER_SET_MEM_TABLE) {
    VhostUserMemoryHeader mh;
    if (size < sizeof mh) return MakeError(EBADMSG, "{}: payload size {} too small", name, size);
    std::memcpy(&mh, msg.payload.data(), sizeof mh);
    if (mh.nregions > VHOST_MEMORY_BASELINE_NREGIONS) {
      return MakeError(EBADMSG, "{}: {} regions (at most {})", name, mh.nregions,
                       VHOST_MEMORY_BASELINE_NREGIONS);
    }
    size_t want = sizeof mh + size_t{mh.nregions} * sizeof(VhostUserMemoryRegion);
    if (size != want) {
      return MakeError(EBADMSG, "{}: payload size {} does not match {} regions", name, size,
                       mh.nregions);
    }
    expected_fds = mh.nregions;
  } else if (msg.request == VHOST_USER_GET_CONFIG || msg.request == VHOST_USER_SET_CONFIG) {
    if (size < kConfigHeaderSize) {
      return MakeError(EBADMSG, "{}: payload size {} too small", name, size);
    }
    uint32_t cfg_size;
    std::memcpy(&cfg_size, msg.payload.data() + 4, sizeof cfg_size);
    if (cfg_size > VHOST_USER_MAX_CONFIG_SIZE || size != kConfigHeaderSize + cfg_size) {
      return MakeError(EBADMSG, "{}: payload size {} with config size {}", name, size, cfg_size);
    }
  }
  switch (rule->fds) {
    case Rule::Fds::kNone:
    case Rule::Fds::kPerRegion:
      break;  // expected_fds already set
    case Rule::Fds::kOne:
      expected_fds = 1;
      break;
    case Rule::Fds::kAny:
      fds_any = true;
      break;
    case Rule::Fds::kOneOrNone:
      if (msg.fds.size() > 1) return MakeError(EBADMSG, "{}: {} fds", name, msg.fds.size());
      fds_any = true;
      break;
    case Rule::Fds::kVringFile: {
      uint64_t v;
      std::memcpy(&v, msg.payload.data(), sizeof v);
      if ((v & ~(VHOST_USER_VRING_IDX_MASK | VHOST_USER_VRING_NOFD_MASK)) != 0) {
        return MakeError(EBADMSG, "{}: reserved bits set in {:#x}", name, v);
      }
      expected_fds = (v & VHOST_USER_VRING_NOFD_MASK) != 0 ? 0 : 1;
      break;
    }
  }
  if (!fds_any && msg.fds.size() != expected_fds) {
    return MakeError(EBADMSG, "{}: {} fds (must be {})", name, msg.fds.size(), expected_fds);
  }
  return OkStatus();
}

Status ValidateReply(const Message& msg, uint32_t request, std::optional<size_t> expected_size) {
  if (msg.request != request) {
    return MakeError(EBADMSG, "reply to {} carries request {} ({})", RequestName(request),
                     msg.request, RequestName(msg.request));
  }
  if (msg.flags != kBackendReplyFlags) {
    return MakeError(EBADMSG, "reply to {} has flags {:#x} (must be {:#x})", RequestName(request),
                     msg.flags, kBackendReplyFlags);
  }
  if (expected_size && msg.payload.size() != *expected_size) {
    return MakeError(EBADMSG, "reply to {} has size {} (must be {})", RequestName(request),
                     msg.payload.size(), *expected_size);
  }
  if (!msg.fds.empty()) {
    return MakeError(EBADMSG, "reply to {} carries {} fds", RequestName(request), msg.fds.size());
  }
  return OkStatus();
}

Status WriteMessage(int sock, uint32_t request, uint32_t flags, std::span<const uint8_t> payload,
                    std::span<const int> fds) {
  if (payload.size() > kMaxPayloadSize) {
    return MakeError(EMSGSIZE, "{}: payload of {} bytes exceeds {}", RequestName(request),
                     payload.size(), kMaxPayloadSize);
  }
  if (fds.size() > kMaxFds) {
    return MakeError(EINVAL, "{}: {} fds (at most {})", RequestName(request), fds.size(), kMaxFds);
  }
  VhostUserHeader hdr{request, flags, static_cast<uint32_t>(payload.size())};
  std::vector<uint8_t> buf(sizeof hdr + payload.size());
  std::memcpy(buf.data(), &hdr, sizeof hdr);
  if (!payload.empty()) std::memcpy(buf.data() + sizeof hdr, payload.data(), payload.size());
  auto st = SendWithFds(sock, buf.data(), buf.size(), fds);
  if (!st.ok()) {
    Error e = st.take_error();
    return MakeError(e.code, "sending {}: {}", RequestName(request), e.context);
  }
  return OkStatus();
}

Status WriteReply(int sock, uint32_t request, std::span<const uint8_t> payload) {
  return WriteMessage(sock, request, kBackendReplyFlags, payload);
}

Status WriteReplyU64(int sock, uint32_t request, uint64_t value) {
  uint8_t bytes[sizeof value];
  std::memcpy(bytes, &value, sizeof value);
  return WriteReply(sock, request, bytes);
}

std::string Describe(const Message& msg) {
  return fmt::format("{} flags={:#x} size={} fds={}", RequestName(msg.request), msg.flags,
                     msg.payload.size(), msg.fds.size());
}

}  // namespace vsockd::vhost_user
