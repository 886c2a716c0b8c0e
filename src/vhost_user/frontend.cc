#include "vhost_user/frontend.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <thread>

#include "base/unix_socket.h"

namespace vsockd::vhost_user {
namespace {

// Longest a call waits for a reply. Generous: a backend answers in microseconds, but a
// loaded CI machine under sanitizers is slow.
constexpr int kReplyTimeoutSeconds = 10;

template <typename T>
std::span<const uint8_t> Bytes(const T& value) {
  return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&value), sizeof value);
}

}  // namespace

Result<Frontend> Frontend::Connect(const std::string& path, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto fd = ConnectUnix(path);
    if (fd.ok()) return FromFd(std::move(*fd));
    int code = fd.error().code;
    bool retry = code == ENOENT || code == ECONNREFUSED || code == EAGAIN;
    if (!retry || std::chrono::steady_clock::now() >= deadline) return fd.take_error();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

Result<Frontend> Frontend::FromFd(Fd fd) {
  VSOCKD_RETURN_IF_ERROR(SetNonBlocking(fd.get(), false));
  timeval tv{};
  tv.tv_sec = kReplyTimeoutSeconds;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) {
    return ErrnoError("setsockopt(SO_RCVTIMEO) on vhost-user frontend socket");
  }
  return Frontend(std::move(fd));
}

Status Frontend::Send(uint32_t request, std::span<const uint8_t> payload, std::span<const int> fds,
                      bool want_ack) {
  bool ack = reply_ack() && (want_ack || need_reply_all_);
  uint32_t flags = VHOST_USER_VERSION | (ack ? VHOST_USER_NEED_REPLY_MASK : 0);
  VSOCKD_RETURN_IF_ERROR(WriteMessage(sock_.get(), request, flags, payload, fds));
  if (!ack) return OkStatus();
  auto reply = ReadMessage(sock_.get());
  if (!reply.ok()) return reply.take_error();
  VSOCKD_RETURN_IF_ERROR(ValidateReply(*reply, request, sizeof(uint64_t)));
  uint64_t value = 0;
  reply->Get(&value);
  if (value != 0) {
    return MakeError(EREMOTEIO, "backend refused {} (ack {})", RequestName(request), value);
  }
  return OkStatus();
}

Result<Message> Frontend::Call(uint32_t request, std::span<const uint8_t> payload,
                               std::optional<size_t> reply_size) {
  VSOCKD_RETURN_IF_ERROR(WriteMessage(sock_.get(), request, VHOST_USER_VERSION, payload));
  auto reply = ReadMessage(sock_.get());
  if (!reply.ok()) return reply.take_error();
  VSOCKD_RETURN_IF_ERROR(ValidateReply(*reply, request, reply_size));
  return reply;
}

Result<uint64_t> Frontend::CallU64(uint32_t request) {
  auto reply = Call(request, {}, sizeof(uint64_t));
  if (!reply.ok()) return reply.take_error();
  uint64_t value = 0;
  reply->Get(&value);
  return value;
}

Result<uint64_t> Frontend::GetFeatures() { return CallU64(VHOST_USER_GET_FEATURES); }

Status Frontend::SetFeatures(uint64_t features) {
  return Send(VHOST_USER_SET_FEATURES, Bytes(features));
}

Result<uint64_t> Frontend::GetProtocolFeatures() {
  return CallU64(VHOST_USER_GET_PROTOCOL_FEATURES);
}

Status Frontend::SetProtocolFeatures(uint64_t features) {
  // Sent before REPLY_ACK is in force (the backend learns it from this very message).
  VSOCKD_RETURN_IF_ERROR(Send(VHOST_USER_SET_PROTOCOL_FEATURES, Bytes(features)));
  protocol_features_ = features;
  return OkStatus();
}

Status Frontend::SetOwner() { return Send(VHOST_USER_SET_OWNER, {}); }
Status Frontend::ResetOwner() { return Send(VHOST_USER_RESET_OWNER, {}); }

Result<uint64_t> Frontend::GetQueueNum() { return CallU64(VHOST_USER_GET_QUEUE_NUM); }

Result<std::vector<uint8_t>> Frontend::GetConfig(uint32_t offset, uint32_t size, uint32_t flags) {
  if (size > VHOST_USER_MAX_CONFIG_SIZE) {
    return MakeError(EINVAL, "config read of {} bytes exceeds {}", size,
                     VHOST_USER_MAX_CONFIG_SIZE);
  }
  std::vector<uint8_t> request(kConfigHeaderSize + size, 0);
  std::memcpy(request.data(), &offset, 4);
  std::memcpy(request.data() + 4, &size, 4);
  std::memcpy(request.data() + 8, &flags, 4);
  auto reply = Call(VHOST_USER_GET_CONFIG, request, std::nullopt);
  if (!reply.ok()) return reply.take_error();
  if (reply->payload.empty()) {
    return MakeError(EIO, "backend failed GET_CONFIG offset {} size {}", offset, size);
  }
  if (reply->payload.size() != request.size()) {
    return MakeError(EBADMSG, "GET_CONFIG reply has size {} (must be {})", reply->payload.size(),
                     request.size());
  }
  uint32_t r_offset, r_size;
  std::memcpy(&r_offset, reply->payload.data(), 4);
  std::memcpy(&r_size, reply->payload.data() + 4, 4);
  if (r_offset != offset || r_size != size) {
    return MakeError(EBADMSG, "GET_CONFIG reply for offset {} size {} (asked {} {})", r_offset,
                     r_size, offset, size);
  }
  return std::vector<uint8_t>(reply->payload.begin() + kConfigHeaderSize, reply->payload.end());
}

Status Frontend::SetMemTable(std::span<const virtio::MemoryRegion> regions,
                             std::span<const int> fds) {
  if (regions.size() > VHOST_MEMORY_BASELINE_NREGIONS || regions.size() != fds.size()) {
    return MakeError(EINVAL, "SET_MEM_TABLE with {} regions and {} fds (at most {})",
                     regions.size(), fds.size(), VHOST_MEMORY_BASELINE_NREGIONS);
  }
  VhostUserMemoryHeader hdr{static_cast<uint32_t>(regions.size()), 0};
  std::vector<uint8_t> payload(sizeof hdr + regions.size() * sizeof(VhostUserMemoryRegion));
  std::memcpy(payload.data(), &hdr, sizeof hdr);
  for (size_t i = 0; i < regions.size(); ++i) {
    VhostUserMemoryRegion r{regions[i].guest_phys_addr, regions[i].memory_size,
                            regions[i].userspace_addr, regions[i].mmap_offset};
    std::memcpy(payload.data() + sizeof hdr + i * sizeof r, &r, sizeof r);
  }
  // As QEMU does: with REPLY_ACK, wait until the backend has mapped the table.
  return Send(VHOST_USER_SET_MEM_TABLE, payload, fds, /*want_ack=*/true);
}

Status Frontend::SetVringNum(uint32_t index, uint32_t num) {
  return Send(VHOST_USER_SET_VRING_NUM, Bytes(vhost_vring_state{index, num}));
}

Status Frontend::SetVringAddr(const vhost_vring_addr& addr) {
  return Send(VHOST_USER_SET_VRING_ADDR, Bytes(addr));
}

Status Frontend::SetVringBase(uint32_t index, uint32_t base) {
  return Send(VHOST_USER_SET_VRING_BASE, Bytes(vhost_vring_state{index, base}));
}

Result<uint32_t> Frontend::GetVringBase(uint32_t index) {
  auto reply = Call(VHOST_USER_GET_VRING_BASE, Bytes(vhost_vring_state{index, 0}),
                    sizeof(vhost_vring_state));
  if (!reply.ok()) return reply.take_error();
  vhost_vring_state s;
  reply->Get(&s);
  if (s.index != index) {
    return MakeError(EBADMSG, "GET_VRING_BASE reply for vring {} (asked {})", s.index, index);
  }
  return s.num;
}

Status Frontend::SetVringFile(uint32_t request, uint32_t index, int fd) {
  if (index > VHOST_USER_VRING_IDX_MASK) {
    return MakeError(EINVAL, "{}: vring index {} does not fit 8 bits", RequestName(request), index);
  }
  uint64_t value = index;
  if (fd < 0) {
    value |= VHOST_USER_VRING_NOFD_MASK;
    return Send(request, Bytes(value));
  }
  int fds[1] = {fd};
  return Send(request, Bytes(value), fds);
}

Status Frontend::SetVringKick(uint32_t index, int fd) {
  return SetVringFile(VHOST_USER_SET_VRING_KICK, index, fd);
}
Status Frontend::SetVringCall(uint32_t index, int fd) {
  return SetVringFile(VHOST_USER_SET_VRING_CALL, index, fd);
}
Status Frontend::SetVringErr(uint32_t index, int fd) {
  return SetVringFile(VHOST_USER_SET_VRING_ERR, index, fd);
}

Status Frontend::SetVringEnable(uint32_t index, bool enable) {
  return Send(VHOST_USER_SET_VRING_ENABLE, Bytes(vhost_vring_state{index, enable ? 1u : 0u}));
}

Status Frontend::SendRaw(const VhostUserHeader& header, std::span<const uint8_t> payload,
                         std::span<const int> fds) {
  std::vector<uint8_t> buf(sizeof header + payload.size());
  std::memcpy(buf.data(), &header, sizeof header);
  if (!payload.empty()) std::memcpy(buf.data() + sizeof header, payload.data(), payload.size());
  return SendWithFds(sock_.get(), buf.data(), buf.size(), fds);
}

Result<Message> Frontend::ReadRaw() { return ReadMessage(sock_.get()); }

}  // namespace vsockd::vhost_user
