// libFuzzer target: the fuzz input is a stream of vhost-user requests (12-byte header, then
// up to `size` payload bytes) fed to a Backend driving a FakeDevice. File descriptors the
// requests need are made up by the harness (memfds for memory tables, eventfds for
// kick/call/err), so memory mapping, ring configuration and start/stop are reached. After
// each request every kick fd is signalled and the loop runs once, so kicks are delivered.
//
// The fake device walks each ring it is given (pop everything, return it used with length
// 0), which exercises the SplitQueue over whatever rings the input described.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "base/event_loop.h"
#include "base/log.h"
#include "vhost_user/backend.h"
#include "vhost_user/fake_device_for_test.h"

namespace {

using namespace vsockd;
using namespace vsockd::vhost_user;

constexpr size_t kMemSize = 1 << 20;
constexpr size_t kKeptEventFds = 16;

void Drain(int fd) {
  uint8_t buf[4096];
  while (::recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool quiet = [] {
    SetLogLevel(LogLevel::kOff);
    return true;
  }();
  (void)quiet;

  auto loop = EventLoop::Create();
  if (!loop.ok()) return 0;
  testing::FakeDevice dev(3);
  dev.record_enabled = false;
  dev.on_start = [](uint32_t, virtio::SplitQueue* q) {
    virtio::DescChain chain;
    for (int i = 0; i < 64; ++i) {
      auto r = q->Pop(&chain);
      if (r == virtio::PopResult::kOk || r == virtio::PopResult::kBadChain) {
        q->PushUsed(chain.head, 0);
      } else {
        break;
      }
    }
    q->Notify();
  };
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  Fd peer(sv[1]);
  Fd memfd(::memfd_create("fuzz_guest", MFD_CLOEXEC));
  if (!memfd || ::ftruncate(memfd.get(), kMemSize) != 0) return 0;
  std::vector<Fd> kicks;  // our ends of the newest eventfds handed over

  {
    Backend backend(loop->get(), &dev);
    if (!backend.Attach(Fd(sv[0])).ok()) return 0;

    size_t pos = 0;
    while (pos + kHeaderSize <= size) {
      VhostUserHeader h;
      std::memcpy(&h, data + pos, sizeof h);
      pos += sizeof h;
      Message msg;
      msg.request = h.request;
      msg.flags = h.flags;
      size_t len = std::min<size_t>(h.size, size - pos);
      msg.payload.assign(data + pos, data + pos + len);
      pos += len;

      // Attach the fds the request asks for (so the interesting paths are reachable).
      size_t nfds = 0;
      bool memory = false;
      switch (msg.request) {
        case VHOST_USER_SET_MEM_TABLE:
          if (msg.payload.size() >= 4) {
            uint32_t n;
            std::memcpy(&n, msg.payload.data(), 4);
            nfds = std::min<uint32_t>(n, 8);
            memory = true;
          }
          break;
        case VHOST_USER_SET_VRING_KICK:
        case VHOST_USER_SET_VRING_CALL:
        case VHOST_USER_SET_VRING_ERR:
          if (msg.payload.size() >= 8) {
            uint64_t v;
            std::memcpy(&v, msg.payload.data(), 8);
            nfds = (v & VHOST_USER_VRING_NOFD_MASK) ? 0 : 1;
          }
          break;
        case VHOST_USER_SET_LOG_BASE:
        case VHOST_USER_SET_LOG_FD:
        case VHOST_USER_SET_SLAVE_REQ_FD:
        case VHOST_USER_ADD_MEM_REG:
          nfds = 1;
          break;
        default:
          break;
      }
      for (size_t i = 0; i < nfds; ++i) {
        if (memory) {
          msg.fds.emplace_back(::dup(memfd.get()));
        } else {
          Fd e(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
          msg.fds.emplace_back(::dup(e.get()));
          kicks.push_back(std::move(e));
          // Only the newest eventfds can still be installed (3 queues x kick/call/err at
          // most); signalling every one ever handed over made long inputs quadratic.
          if (kicks.size() > kKeptEventFds) kicks.erase(kicks.begin());
        }
      }

      auto st = backend.HandleMessage(msg);
      Drain(peer.get());
      if (!st.ok()) {
        backend.Disconnect();
        break;
      }
      for (const auto& k : kicks) {
        uint64_t one = 1;
        (void)!::write(k.get(), &one, sizeof one);
      }
      (*loop)->RunOnce(0);
    }
  }
  return 0;
}
