#include "vhost_user/backend.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>

#include <bit>
#include <chrono>

#include "base/event_fd.h"
#include "base/log.h"
#include "base/unix_socket.h"
#include "virtio/virtio_ring.h"

namespace vsockd::vhost_user {
namespace {

constexpr uint64_t kVersion1 = 1ull << virtio::VIRTIO_F_VERSION_1;
constexpr uint64_t kProtocolFeaturesBit = 1ull << VHOST_USER_F_PROTOCOL_FEATURES;
// vring indices are 8 bits in SET_VRING_KICK/CALL/ERR.
constexpr uint32_t kMaxVrings = VHOST_USER_VRING_IDX_MASK + 1;
// A frontend that stops in the middle of a message (or does not read our replies) is
// dropped after this long instead of blocking the event loop: QEMU sends every message
// with one sendmsg, so a complete message never takes this long to arrive.
constexpr auto kIoTimeout = std::chrono::seconds(2);

// Requests after which the session state may differ (Snapshot() would say something else).
bool ChangesState(uint32_t request) {
  switch (request) {
    case VHOST_USER_GET_FEATURES:
    case VHOST_USER_GET_PROTOCOL_FEATURES:
    case VHOST_USER_GET_QUEUE_NUM:
    case VHOST_USER_GET_CONFIG:
    case VHOST_USER_SET_OWNER:
      return false;
    default:
      return true;
  }
}

bool HasOwnReply(uint32_t request) {
  switch (request) {
    case VHOST_USER_GET_FEATURES:
    case VHOST_USER_GET_PROTOCOL_FEATURES:
    case VHOST_USER_GET_QUEUE_NUM:
    case VHOST_USER_GET_VRING_BASE:
    case VHOST_USER_GET_CONFIG:
      return true;
    default:
      return false;
  }
}

Status SetSocketTimeouts(int fd) {
  timeval tv{};
  tv.tv_sec = std::chrono::duration_cast<std::chrono::seconds>(kIoTimeout).count();
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) {
    return ErrnoError("setsockopt(SO_RCVTIMEO/SO_SNDTIMEO) on vhost-user connection");
  }
  return OkStatus();
}

}  // namespace

Backend::Backend(EventLoop* loop, virtio::VirtioDevice* device) : loop_(loop), device_(device) {
  uint32_t n = std::min(device_->NumQueues(), kMaxVrings);
  for (uint32_t i = 0; i < n; ++i) vrings_.push_back(std::make_unique<Vring>());
}

Backend::~Backend() {
  if (conn_) EndSession(MakeError(ECONNABORTED, "backend destroyed"));
  if (listener_ && listener_watched_) loop_->Remove(listener_.get());
}

Status Backend::Listen(const std::string& path) {
  if (listener_) return MakeError(EBUSY, "vhost-user backend already listening");
  auto fd = ListenUnix(path, /*backlog=*/16, /*nonblocking=*/true);
  if (!fd.ok()) return fd.take_error();
  VSOCKD_RETURN_IF_ERROR(Watch(std::move(*fd)));
  LOG_INFO("vhost-user backend listening on {}", path);
  return OkStatus();
}

Status Backend::ListenOn(Fd listener, const std::string& name) {
  if (listener_) return MakeError(EBUSY, "vhost-user backend already listening");
  VSOCKD_RETURN_IF_ERROR(SetNonBlocking(listener.get(), true));
  VSOCKD_RETURN_IF_ERROR(Watch(std::move(listener)));
  LOG_INFO("vhost-user backend listening on {} (inherited socket)", name);
  return OkStatus();
}

Status Backend::Watch(Fd listener) {
  listener_ = std::move(listener);
  if (!conn_) {
    auto st = loop_->Add(listener_.get(), EPOLLIN, [this](uint32_t) { OnAcceptable(); });
    if (!st.ok()) {
      listener_.Reset();
      return st;
    }
    listener_watched_ = true;
  }
  return OkStatus();
}

void Backend::OnAcceptable() {
  int fd;
  do {
    fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      LOG_RATELIMITED(LogLevel::kWarn, "vhost-user accept: {}", std::strerror(errno));
    }
    return;
  }
  auto st = Attach(Fd(fd));
  if (!st.ok()) LOG_WARN("vhost-user: cannot serve new frontend: {}", st.error().ToString());
}

Status Backend::Attach(Fd connection) {
  if (conn_) return MakeError(EBUSY, "a vhost-user frontend is already connected");
  VSOCKD_RETURN_IF_ERROR(SetNonBlocking(connection.get(), false));
  VSOCKD_RETURN_IF_ERROR(SetSocketTimeouts(connection.get()));
  int fd = connection.get();
  VSOCKD_RETURN_IF_ERROR(loop_->Add(fd, EPOLLIN, [this](uint32_t events) { OnReadable(events); }));
  conn_ = std::move(connection);
  // One frontend at a time: stop accepting until this one goes away.
  if (listener_ && listener_watched_) {
    loop_->Remove(listener_.get());
    listener_watched_ = false;
  }
  ++sessions_;
  LOG_INFO("vhost-user frontend connected (session {})", sessions_);
  return OkStatus();
}

void Backend::Disconnect() {
  if (conn_) EndSession(MakeError(ECONNABORTED, "disconnected by the backend"));
}

void Backend::OnReadable(uint32_t /*events*/) {
  // Level-triggered: one message per wakeup keeps other handlers (kicks, host sockets)
  // from starving behind a chatty frontend. EPOLLHUP/ERR show up as a read error or EOF.
  auto msg = ReadMessage(conn_.get());
  if (!msg.ok()) {
    EndSession(msg.error());
    return;
  }
  auto st = HandleMessage(*msg);
  if (!st.ok()) EndSession(st.error());
}

void Backend::EndSession(const Error& why) {
  if (!conn_) return;
  if (why.code == kPeerClosed) {
    LOG_INFO("vhost-user frontend disconnected (session {})", sessions_);
  } else {
    LOG_WARN("vhost-user session {} ended: {}", sessions_, why.ToString());
    if (why.code != ECONNABORTED) ++session_errors_;  // not our own disconnect
  }
  for (uint32_t i = 0; i < vrings_.size(); ++i) StopQueue(i);
  ResetSessionState();
  loop_->Remove(conn_.get());
  conn_.Reset();
  device_->FrontendGone();
  NotifyObserver();
  ResumeAccepting();
}

void Backend::ResumeAccepting() {
  if (listener_ && !listener_watched_) {
    auto st = loop_->Add(listener_.get(), EPOLLIN, [this](uint32_t) { OnAcceptable(); });
    if (st.ok()) {
      listener_watched_ = true;
    } else {
      LOG_ERROR("vhost-user: cannot resume accepting frontends: {}", st.error().ToString());
    }
  }
}

void Backend::ResetVring(uint32_t index, bool keep_history) {
  Vring& v = *vrings_[index];
  ForgetKick(index);
  v.queue.Reset();
  v.call.Reset();
  v.err.Reset();
  v.num = 0;
  v.addr_set = false;
  v.addr = {};
  v.base = 0;
  v.enable = Vring::Enable::kUnset;
  v.running = false;
  if (!keep_history) {
    v.ran_before = false;
    v.prev_desc = v.prev_avail = v.prev_used = 0;
    v.prev_stop_idx = 0;
  }
}

void Backend::ResetSessionState() {
  for (uint32_t i = 0; i < vrings_.size(); ++i) ResetVring(i, /*keep_history=*/false);
  memory_.reset();
  regions_.clear();
  region_fds_.clear();
  acked_features_ = 0;
  features_set_ = false;
  protocol_features_acked_ = false;
  protocol_features_ = 0;
  has_reply_ = false;
  reply_ = Message();
}

void Backend::SetReply(uint32_t request, std::span<const uint8_t> payload) {
  has_reply_ = true;
  reply_.request = request;
  reply_.flags = kBackendReplyFlags;
  reply_.payload.assign(payload.begin(), payload.end());
}

Status Backend::HandleMessage(Message& msg) {
  if (!conn_) return MakeError(ENOTCONN, "no vhost-user frontend attached");
  VSOCKD_RETURN_IF_ERROR(ValidateRequest(msg));
  LOG_DEBUG("vhost-user <- {}", Describe(msg));

  has_reply_ = false;
  Status result = Dispatch(msg);
  msg.fds.clear();  // close whatever the handler did not keep
  if (ChangesState(msg.request)) NotifyObserver();

  if (has_reply_) {
    has_reply_ = false;
    LOG_DEBUG("vhost-user -> {} size={}", RequestName(reply_.request), reply_.payload.size());
    return WriteReply(conn_.get(), reply_.request, reply_.payload);
  }
  if (!result.ok() && HasOwnReply(msg.request)) {
    // The frontend waits for an answer we cannot give: ending the session is the only way
    // not to leave it hanging.
    return MakeError(result.error().code, "{} failed: {}", RequestName(msg.request),
                     result.error().context);
  }
  if (!result.ok()) {
    LOG_RATELIMITED(LogLevel::kWarn, "vhost-user {} refused: {}", RequestName(msg.request),
                    result.error().ToString());
  }
  bool reply_ack = (protocol_features_ & (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK)) != 0;
  if (reply_ack && msg.need_reply() && !HasOwnReply(msg.request)) {
    return WriteReplyU64(conn_.get(), msg.request, result.ok() ? 0 : 1);
  }
  return OkStatus();
}

Status Backend::Dispatch(Message& msg) {
  switch (msg.request) {
    case VHOST_USER_GET_FEATURES: {
      uint64_t offered = device_->DeviceFeatures() | kVersion1 | kProtocolFeaturesBit;
      SetReplyValue(msg.request, offered);
      return OkStatus();
    }
    case VHOST_USER_SET_FEATURES:
      return OnSetFeatures(msg);
    case VHOST_USER_SET_OWNER:
      return OkStatus();
    case VHOST_USER_RESET_OWNER:
      // Deprecated; treat it as a device reset: stop and forget every ring.
      for (uint32_t i = 0; i < vrings_.size(); ++i) {
        StopQueue(i);
        ResetVring(i, /*keep_history=*/true);
      }
      return OkStatus();
    case VHOST_USER_SET_MEM_TABLE:
      return OnSetMemTable(msg);
    case VHOST_USER_SET_VRING_NUM:
      return OnSetVringNum(msg);
    case VHOST_USER_SET_VRING_ADDR:
      return OnSetVringAddr(msg);
    case VHOST_USER_SET_VRING_BASE:
      return OnSetVringBase(msg);
    case VHOST_USER_GET_VRING_BASE:
      return OnGetVringBase(msg);
    case VHOST_USER_SET_VRING_KICK:
    case VHOST_USER_SET_VRING_CALL:
    case VHOST_USER_SET_VRING_ERR:
      return OnSetVringFile(msg);
    case VHOST_USER_GET_PROTOCOL_FEATURES: {
      uint64_t offered = kBackendProtocolFeatures;
      SetReplyValue(msg.request, offered);
      return OkStatus();
    }
    case VHOST_USER_SET_PROTOCOL_FEATURES:
      return OnSetProtocolFeatures(msg);
    case VHOST_USER_GET_QUEUE_NUM: {
      uint64_t n = vrings_.size();
      SetReplyValue(msg.request, n);
      return OkStatus();
    }
    case VHOST_USER_SET_VRING_ENABLE:
      return OnSetVringEnable(msg);
    case VHOST_USER_GET_CONFIG:
      return OnGetConfig(msg);
    case VHOST_USER_SET_CONFIG:
      return MakeError(EPERM, "the config space is read-only");
    default:
      return MakeError(EOPNOTSUPP, "{} ({}) is not supported", RequestName(msg.request),
                       msg.request);
  }
}

Status Backend::OnSetFeatures(const Message& msg) {
  uint64_t features = 0;
  msg.Get(&features);  // size validated by ValidateRequest
  uint64_t offered = device_->DeviceFeatures() | kVersion1 | kProtocolFeaturesBit;
  if ((features & ~offered) != 0) {
    return MakeError(EINVAL, "features {:#x} include bits never offered ({:#x})", features,
                     features & ~offered);
  }
  if ((features & kVersion1) == 0) {
    return MakeError(EINVAL, "features {:#x} lack VIRTIO_F_VERSION_1 (legacy is unsupported)",
                     features);
  }
  acked_features_ = features;
  features_set_ = true;
  // Rings are not touched here: SET_FEATURES must never disable a ring (rust-vmm #210).
  protocol_features_acked_ = (features & kProtocolFeaturesBit) != 0;
  device_->SetAckedFeatures(features & ~kProtocolFeaturesBit);
  return OkStatus();
}

Status Backend::OnSetProtocolFeatures(const Message& msg) {
  uint64_t features = 0;
  msg.Get(&features);
  if ((features & ~kBackendProtocolFeatures) != 0) {
    return MakeError(EINVAL, "protocol features {:#x} include bits never offered ({:#x})", features,
                     features & ~kBackendProtocolFeatures);
  }
  protocol_features_ = features;
  return OkStatus();
}

Status Backend::OnSetMemTable(Message& msg) {
  VhostUserMemoryHeader hdr;
  std::memcpy(&hdr, msg.payload.data(), sizeof hdr);  // sizes validated by ValidateRequest
  std::vector<virtio::MemoryRegion> regions(hdr.nregions);
  for (uint32_t i = 0; i < hdr.nregions; ++i) {
    VhostUserMemoryRegion r;
    std::memcpy(&r, msg.payload.data() + sizeof hdr + i * sizeof r, sizeof r);
    regions[i] = {r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset};
  }
  // A region larger than its file would map, but touching the part past the end of the
  // file raises SIGBUS: refuse it up front (memfd, tmpfs and hugetlbfs files have a size).
  for (uint32_t i = 0; i < hdr.nregions; ++i) {
    struct stat st;
    if (::fstat(msg.fds[i].get(), &st) < 0) return ErrnoError("fstat memory region {} fd", i);
    uint64_t end;
    if (__builtin_add_overflow(regions[i].mmap_offset, regions[i].memory_size, &end)) {
      return MakeError(EINVAL, "memory region {}: offset + size overflows", i);
    }
    if (S_ISREG(st.st_mode) && end > static_cast<uint64_t>(st.st_size)) {
      return MakeError(EINVAL, "memory region {} ends at {:#x}, past its file's {:#x} bytes", i,
                       end, static_cast<uint64_t>(st.st_size));
    }
  }
  // Our own copy of each file, for a keeper (Snapshot()); GuestMemory closes the originals.
  std::vector<Fd> copies;
  for (uint32_t i = 0; i < hdr.nregions; ++i) {
    Fd copy(::fcntl(msg.fds[i].get(), F_DUPFD_CLOEXEC, 0));
    if (!copy) return ErrnoError("dup of memory region {} fd", i);
    copies.push_back(std::move(copy));
  }
  auto mem = virtio::GuestMemory::Map(regions, std::move(msg.fds));
  msg.fds.clear();
  if (!mem.ok()) return mem.take_error();
  regions_ = regions;
  region_fds_ = std::move(copies);
  std::shared_ptr<const virtio::GuestMemory> table = std::move(*mem);
  // Running queues switch to the new table; the old one stays mapped until the last queue
  // lets go of it (shared_ptr), so nothing ever points into unmapped memory.
  for (uint32_t i = 0; i < vrings_.size(); ++i) {
    Vring& v = *vrings_[i];
    if (!v.running) continue;
    auto st = v.queue.Remap(table);
    if (!st.ok()) {
      LOG_WARN("vhost-user: vring {} is not in the new memory table, stopping it: {}", i,
               st.error().ToString());
      StopQueue(i);
    }
  }
  memory_ = std::move(table);
  LOG_DEBUG("vhost-user: memory table with {} regions", hdr.nregions);
  // Rings that were waiting only for memory can start now.
  for (uint32_t i = 0; i < vrings_.size(); ++i) {
    auto st = MaybeStart(i);
    if (!st.ok()) LOG_WARN("vhost-user: {}", st.error().ToString());
  }
  return OkStatus();
}

Result<uint32_t> Backend::CheckIndex(uint32_t index) const {
  if (index >= vrings_.size()) {
    return MakeError(EINVAL, "vring index {} out of range (device has {})", index, vrings_.size());
  }
  return index;
}

Status Backend::OnSetVringNum(const Message& msg) {
  vhost_vring_state s;
  msg.Get(&s);
  auto i = CheckIndex(s.index);
  if (!i.ok()) return i.take_error();
  Vring& v = *vrings_[*i];
  if (v.running) return MakeError(EBUSY, "vring {} is running; stop it before resizing", *i);
  uint32_t max = std::min(device_->MaxQueueSize(), virtio::kMaxQueueSize);
  if (s.num == 0 || !std::has_single_bit(s.num) || s.num > max) {
    return MakeError(EINVAL, "vring {} size {} (must be a power of two <= {})", *i, s.num, max);
  }
  v.num = s.num;
  return MaybeStart(*i);
}

Status Backend::OnSetVringAddr(const Message& msg) {
  vhost_vring_addr a;
  msg.Get(&a);
  auto i = CheckIndex(a.index);
  if (!i.ok()) return i.take_error();
  Vring& v = *vrings_[*i];
  if (v.running) return MakeError(EBUSY, "vring {} is running; stop it before moving it", *i);
  if ((a.flags & (1u << VHOST_VRING_F_LOG)) != 0) {
    return MakeError(EINVAL, "vring {}: dirty logging requested but never offered", *i);
  }
  // Kept as given; translated (and bounds-checked) when the ring starts.
  v.addr = a;
  v.addr_set = true;
  return MaybeStart(*i);
}

Status Backend::OnSetVringBase(const Message& msg) {
  vhost_vring_state s;
  msg.Get(&s);
  auto i = CheckIndex(s.index);
  if (!i.ok()) return i.take_error();
  Vring& v = *vrings_[*i];
  if (v.running) return MakeError(EBUSY, "vring {} is running; stop it before rebasing", *i);
  if (s.num > 0xffff) return MakeError(EINVAL, "vring {} base {} exceeds 16 bits", *i, s.num);
  v.base = static_cast<uint16_t>(s.num);
  return MaybeStart(*i);
}

Status Backend::OnGetVringBase(const Message& msg) {
  vhost_vring_state s;
  msg.Get(&s);
  auto i = CheckIndex(s.index);
  if (!i.ok()) return i.take_error();
  // "Stop this ring and tell me where to resume."
  StopQueue(*i);
  ForgetKick(*i);
  Vring& v = *vrings_[*i];
  vhost_vring_state reply{*i, v.base};
  SetReplyValue(msg.request, reply);
  return OkStatus();
}

Status Backend::OnSetVringFile(Message& msg) {
  uint64_t value = 0;
  msg.Get(&value);
  auto i = CheckIndex(static_cast<uint32_t>(value & VHOST_USER_VRING_IDX_MASK));
  if (!i.ok()) return i.take_error();
  bool nofd = (value & VHOST_USER_VRING_NOFD_MASK) != 0;
  Fd fd;
  if (!nofd) fd = std::move(msg.fds[0]);  // count validated by ValidateRequest
  Vring& v = *vrings_[*i];

  switch (msg.request) {
    case VHOST_USER_SET_VRING_KICK: {
      if (nofd) return MakeError(EINVAL, "vring {}: polling (kick with NOFD) is unsupported", *i);
      // O_NONBLOCK is shared with the frontend's side of the eventfd; QEMU creates its
      // event notifiers non-blocking anyway. Nothing here may block the loop.
      VSOCKD_RETURN_IF_ERROR(SetNonBlocking(fd.get(), true));
      uint32_t index = *i;
      // Edge-triggered: every eventfd write is a new edge, so a kick is never lost, and the
      // counter need not be read back (a read per kick was one of the six syscalls of the
      // 64-byte round trip). The counter cannot realistically overflow (2^64 - 2 kicks).
      VSOCKD_RETURN_IF_ERROR(loop_->Add(fd.get(), EPOLLIN | EPOLLET,
                                        [this, index](uint32_t events) { OnKick(index, events); }));
      ForgetKick(*i);
      v.kick = std::move(fd);
      if (v.running) {
        // A kick fd swapped on a running ring: a kick sent to the old fd may be lost.
        device_->QueueKicked(*i);
        return OkStatus();
      }
      return MaybeStart(*i);
    }
    case VHOST_USER_SET_VRING_CALL: {
      Fd old = std::move(v.call);
      v.call = std::move(fd);
      // Point the queue at the new fd before the old one closes (at the end of scope).
      if (v.running) v.queue.SetCallFd(v.call.get());
      return OkStatus();
    }
    default:  // VHOST_USER_SET_VRING_ERR: kept, never written (we report no ring errors).
      v.err = std::move(fd);
      return OkStatus();
  }
}

Status Backend::OnSetVringEnable(const Message& msg) {
  vhost_vring_state s;
  msg.Get(&s);
  auto i = CheckIndex(s.index);
  if (!i.ok()) return i.take_error();
  if (s.num > 1) return MakeError(EINVAL, "vring {}: enable value {}", *i, s.num);
  Vring& v = *vrings_[*i];
  if (s.num == 1) {
    v.enable = Vring::Enable::kOn;
    return MaybeStart(*i);
  }
  v.enable = Vring::Enable::kOff;
  StopQueue(*i);
  return OkStatus();
}

Status Backend::OnGetConfig(const Message& msg) {
  VhostUserConfig cfg{};
  std::memcpy(&cfg, msg.payload.data(), msg.payload.size());  // <= sizeof cfg (validated)
  if (device_->ReadConfig(cfg.offset, std::span<uint8_t>(cfg.payload, cfg.size))) {
    SetReply(msg.request, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&cfg),
                                                   kConfigHeaderSize + cfg.size));
  } else {
    // An empty reply is the protocol's way to say the read failed.
    LOG_RATELIMITED(LogLevel::kWarn, "vhost-user GET_CONFIG offset {} size {} out of range",
                    cfg.offset, cfg.size);
    SetReply(msg.request, {});
  }
  return OkStatus();
}

bool Backend::Enabled(const Vring& v) const {
  switch (v.enable) {
    case Vring::Enable::kOn:
      return true;
    case Vring::Enable::kOff:
      return false;
    case Vring::Enable::kUnset:
      break;
  }
  // Without PROTOCOL_FEATURES (QEMU < 7.2) nobody sends SET_VRING_ENABLE: rings are enabled
  // as soon as they start. With it, they wait for SET_VRING_ENABLE(1).
  return !protocol_features_acked_;
}

Status Backend::MaybeStart(uint32_t index) {
  Vring& v = *vrings_[index];
  if (v.running || !v.kick || v.num == 0 || !v.addr_set || !memory_ || !Enabled(v)) {
    return OkStatus();
  }
  virtio::SplitQueue::Config config;
  config.size = v.num;
  config.desc_addr = v.addr.desc_user_addr;
  config.avail_addr = v.addr.avail_user_addr;
  config.used_addr = v.addr.used_user_addr;
  config.event_idx = (acked_features_ & (1ull << virtio::VIRTIO_RING_F_EVENT_IDX)) != 0;
  config.indirect = (acked_features_ & (1ull << virtio::VIRTIO_RING_F_INDIRECT_DESC)) != 0;
  auto st = v.queue.Configure(memory_, config, v.base);
  if (!st.ok()) {
    v.queue.Reset();
    return MakeError(st.error().code, "vring {} cannot start: {}", index, st.error().context);
  }
  if (v.resume_at_used) {
    v.resume_at_used = false;
    v.queue.ResumeAtUsedIndex();
    v.base = v.queue.last_avail_idx();
  }
  v.queue.SetCallFd(v.call.get());
  // driver_reset: the guest driver re-initialised this ring since its previous run. The
  // frontend tells us nothing directly, so infer it: a pause/resume (VM stop/cont) restarts
  // the ring at the same addresses and at the index where it stopped; a driver reset or
  // reload allocates new rings (new addresses) or, if it happens to reuse the same memory,
  // restarts the indices at 0. Blind spot: a reset that reuses the addresses right after
  // the index wrapped to exactly 0 looks like a pause.
  bool driver_reset =
      v.ran_before &&
      (v.addr.desc_user_addr != v.prev_desc || v.addr.avail_user_addr != v.prev_avail ||
       v.addr.used_user_addr != v.prev_used || (v.base == 0 && v.prev_stop_idx != 0));
  v.ran_before = true;
  v.prev_desc = v.addr.desc_user_addr;
  v.prev_avail = v.addr.avail_user_addr;
  v.prev_used = v.addr.used_user_addr;
  v.running = true;
  LOG_DEBUG("vhost-user: vring {} started (size {}, base {}, driver_reset {})", index, v.num,
            v.base, driver_reset);
  device_->QueueStarted(index, &v.queue, driver_reset);
  return OkStatus();
}

void Backend::StopQueue(uint32_t index) {
  Vring& v = *vrings_[index];
  if (!v.running) return;
  device_->QueueStopped(index);
  v.base = v.queue.last_avail_idx();
  v.prev_stop_idx = v.base;
  v.running = false;
  v.queue.Reset();
  LOG_DEBUG("vhost-user: vring {} stopped at avail index {}", index, v.base);
}

void Backend::ForgetKick(uint32_t index) {
  Vring& v = *vrings_[index];
  if (!v.kick) return;
  loop_->Remove(v.kick.get());
  v.kick.Reset();
}

void Backend::OnKick(uint32_t index, uint32_t events) {
  Vring& v = *vrings_[index];
  if ((events & (EPOLLERR | EPOLLHUP)) != 0 || (events & EPOLLIN) == 0) {
    // Not an eventfd that behaves (hung-up pipe, error): stop watching it.
    LOG_RATELIMITED(LogLevel::kWarn, "vhost-user: vring {} kick fd unusable (events {:#x})", index,
                    events);
    ForgetKick(index);
    return;
  }
  if (v.running) device_->QueueKicked(index);
  // A kick on a ring that is not running is dropped: the device looks at the ring when
  // it starts anyway.
}

void Backend::NotifyObserver() {
  if (observer_) observer_(*this);
}

SessionState Backend::Snapshot(std::vector<int>* fds) const {
  fds->clear();
  SessionState s;
  if (!conn_) return s;
  s.acked_features = acked_features_;
  s.features_set = features_set_;
  s.protocol_features = protocol_features_;
  s.regions = regions_;
  for (const Fd& fd : region_fds_) fds->push_back(fd.get());
  auto add = [fds](const Fd& fd) {
    if (!fd) return SessionState::kNoFd;
    fds->push_back(fd.get());
    return static_cast<int>(fds->size() - 1);
  };
  for (const auto& vp : vrings_) {
    const Vring& v = *vp;
    SessionState::Ring r;
    r.num = v.num;
    r.addr_set = v.addr_set;
    r.addr = v.addr;
    r.base = v.running ? v.queue.last_avail_idx() : v.base;
    r.enable = v.enable == Vring::Enable::kOn ? 1 : v.enable == Vring::Enable::kOff ? 2 : 0;
    r.running = v.running;
    r.kick = add(v.kick);
    r.call = add(v.call);
    r.err = add(v.err);
    s.rings.push_back(r);
  }
  return s;
}

void Backend::Release() {
  if (!conn_) return;
  LOG_INFO("vhost-user session {} released (kept for another process)", sessions_);
  for (uint32_t i = 0; i < vrings_.size(); ++i) StopQueue(i);
  ResetSessionState();
  loop_->Remove(conn_.get());
  conn_.Reset();
  ResumeAccepting();
}

Status Backend::Resume(Fd connection, const SessionState& state, std::vector<Fd> fds) {
  if (conn_) return MakeError(EBUSY, "a vhost-user frontend is already connected");
  if (fds.size() < state.fd_count()) {
    return MakeError(EINVAL, "session state names {} descriptors, {} came", state.fd_count(),
                     fds.size());
  }
  if (state.rings.size() != vrings_.size()) {
    return MakeError(EINVAL, "session state has {} vrings, the device {}", state.rings.size(),
                     vrings_.size());
  }
  uint64_t offered = device_->DeviceFeatures() | kVersion1 | kProtocolFeaturesBit;
  if (state.features_set && (state.acked_features & ~offered) != 0) {
    return MakeError(EINVAL, "session state acked features {:#x} this device does not offer",
                     state.acked_features);
  }
  if ((state.protocol_features & ~kBackendProtocolFeatures) != 0) {
    return MakeError(EINVAL, "session state protocol features {:#x} not offered",
                     state.protocol_features);
  }
  uint32_t max = std::min(device_->MaxQueueSize(), virtio::kMaxQueueSize);
  for (const auto& r : state.rings) {
    if (r.num != 0 && (!std::has_single_bit(r.num) || r.num > max)) {
      return MakeError(EINVAL, "session state: vring size {}", r.num);
    }
    if (r.running && r.kick == SessionState::kNoFd) {
      return MakeError(EINVAL, "session state: a running vring without a kick fd");
    }
  }
  std::shared_ptr<const virtio::GuestMemory> table;
  std::vector<Fd> copies;
  if (!state.regions.empty()) {
    std::vector<Fd> region_fds;
    for (size_t i = 0; i < state.regions.size(); ++i) {
      Fd copy(::fcntl(fds[i].get(), F_DUPFD_CLOEXEC, 0));
      if (!copy) return ErrnoError("dup of memory region {} fd", i);
      copies.push_back(std::move(copy));
      region_fds.push_back(std::move(fds[i]));
    }
    auto mem = virtio::GuestMemory::Map(state.regions, std::move(region_fds));
    if (!mem.ok()) return mem.take_error();
    table = std::move(*mem);
  }
  VSOCKD_RETURN_IF_ERROR(Attach(std::move(connection)));
  LOG_INFO("vhost-user session {} resumed from a kept state ({} regions)", sessions_,
           state.regions.size());
  acked_features_ = state.acked_features;
  features_set_ = state.features_set;
  protocol_features_acked_ = (state.acked_features & kProtocolFeaturesBit) != 0;
  protocol_features_ = state.protocol_features;
  if (features_set_) device_->SetAckedFeatures(acked_features_ & ~kProtocolFeaturesBit);
  memory_ = std::move(table);
  regions_ = state.regions;
  region_fds_ = std::move(copies);
  for (uint32_t i = 0; i < vrings_.size(); ++i) {
    const SessionState::Ring& r = state.rings[i];
    Vring& v = *vrings_[i];
    v.num = r.num;
    v.addr_set = r.addr_set;
    v.addr = r.addr;
    v.addr.index = i;
    v.base = r.base;
    v.enable = r.enable == 1   ? Vring::Enable::kOn
               : r.enable == 2 ? Vring::Enable::kOff
                               : Vring::Enable::kUnset;
    if (r.call != SessionState::kNoFd) v.call = std::move(fds[static_cast<size_t>(r.call)]);
    if (r.err != SessionState::kNoFd) v.err = std::move(fds[static_cast<size_t>(r.err)]);
    if (r.kick != SessionState::kNoFd) {
      Fd kick = std::move(fds[static_cast<size_t>(r.kick)]);
      Status st = SetNonBlocking(kick.get(), true);
      if (st.ok()) {
        st = loop_->Add(kick.get(), EPOLLIN | EPOLLET,
                        [this, i](uint32_t events) { OnKick(i, events); });
      }
      if (!st.ok()) {
        EndSession(st.error());
        return st;
      }
      v.kick = std::move(kick);
    }
    v.resume_at_used = r.running;
    Status st = MaybeStart(i);
    if (!st.ok()) LOG_WARN("vhost-user: resumed {}", st.error().ToString());
    // Kicks sent while nobody served the ring were counted by the eventfd: look now.
    if (v.running) device_->QueueKicked(i);
  }
  NotifyObserver();
  return OkStatus();
}

}  // namespace vsockd::vhost_user
