// vguest: a virtual guest on the command line. Attaches to a vhost-user-vsock backend as
// QEMU plus a Linux 6.1 guest would, and relays one vsock stream to stdin/stdout, like
// `socat - VSOCK-CONNECT:2:PORT` run inside a guest.
//
//   vguest --socket PATH connect PORT   guest -> host stream to host port PORT
//   vguest --socket PATH listen PORT    accept one host -> guest stream on guest port PORT
//   vguest --socket PATH info           print the CID and the negotiated features
//   --seqpacket (connect, listen): a SOCK_SEQPACKET connection; each read from stdin is one
//   message (at most 64 KiB), each message received is written to stdout whole
//
// stdin EOF half-closes (SHUTDOWN SEND); the relay goes on until the peer's EOF. Exit 0 on a
// clean close or SIGINT/SIGTERM, 1 on reset/refusal/timeout, 2 on usage or attach errors.
// Logs go to stderr. Threading: one event loop thread.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/log.h"
#include "base/run_main.h"
#include "vguest/guest.h"
#include "vhost_user/protocol.h"
#include "virtio/virtio_ring.h"

namespace vsockd::vguest {
namespace {

EventLoop* g_loop = nullptr;

void OnSignal(int) {
  if (g_loop != nullptr) g_loop->Stop();
}

// Relays stdin -> stream and stream -> stdout through the event loop, never blocking:
// stdin is read only while the stream takes data (credit), and reading the stream pauses
// while stdout does not take it.
class Relay {
 public:
  // messages: SEQPACKET (each stdin read is one message; messages are written out whole).
  Relay(EventLoop* loop, int* exit_code, bool messages)
      : loop_(loop), exit_code_(exit_code), messages_(messages) {}
  ~Relay() {
    if (in_polled_) loop_->Remove(STDIN_FILENO);
    if (out_polled_) loop_->Remove(STDOUT_FILENO);
  }

  void Start(Stream* stream) {
    stream_ = stream;
    stream_->on_data = [this](std::span<const uint8_t> d) { OnData(d); };
    stream_->on_message = [this](std::span<const uint8_t> m, uint32_t) { OnData(m); };
    stream_->on_eof = [this] {
      peer_eof_ = true;
      MaybeDone();
    };
    stream_->on_writable = [this] { PumpIn(); };
    stream_->on_closed = [this](const Status& st) { OnClosed(st); };
    // A regular file or /dev/null cannot be polled (EPERM): it is always readable/writable.
    in_pollable_ = loop_->Add(STDIN_FILENO, 0, [this](uint32_t) { PumpIn(); }).ok();
    in_polled_ = in_pollable_;
    out_pollable_ = loop_->Add(STDOUT_FILENO, 0, [this](uint32_t) { FlushOut(); }).ok();
    out_polled_ = out_pollable_;
    PumpIn();
  }

 private:
  void SetInInterest(bool on) {
    if (in_pollable_ && in_polled_) {
      (void)loop_->Modify(STDIN_FILENO, on ? uint32_t{EPOLLIN} : 0u);
    }
  }
  void SetOutInterest(bool on) {
    if (out_pollable_ && out_polled_) {
      (void)loop_->Modify(STDOUT_FILENO, on ? uint32_t{EPOLLOUT} : 0u);
    }
  }

  void PumpIn() {
    if (stream_ == nullptr || finished_) return;
    while (true) {
      if (messages_ && in_off_ < in_buf_.size()) {
        Status st = stream_->WriteMessage(in_buf_);
        if (!st.ok() && st.error().code == EAGAIN) {
          SetInInterest(false);  // the previous message is still going out: on_writable
          return;
        }
        if (!st.ok())
          return Fail(
              fmt::format("send a {}-byte message: {}", in_buf_.size(), st.error().ToString()));
        in_off_ = in_buf_.size();
      }
      if (in_off_ < in_buf_.size()) {
        size_t n = stream_->Write(in_buf_.data() + in_off_, in_buf_.size() - in_off_);
        in_off_ += n;
        if (in_off_ < in_buf_.size()) {
          SetInInterest(false);  // on_writable brings us back
          return;
        }
      }
      if (stdin_eof_) {
        if (!shutdown_sent_) {
          shutdown_sent_ = true;
          stream_->Shutdown(false, true);
        }
        MaybeDone();
        return;
      }
      in_buf_.resize(64 * 1024);
      in_off_ = 0;
      ssize_t r = ::read(STDIN_FILENO, in_buf_.data(), in_buf_.size());
      if (r > 0) {
        in_buf_.resize(static_cast<size_t>(r));
        continue;
      }
      in_buf_.clear();
      if (r == 0) {
        stdin_eof_ = true;
        if (in_polled_) {
          loop_->Remove(STDIN_FILENO);
          in_polled_ = false;
        }
        continue;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        SetInInterest(true);
        return;
      }
      LOG_ERROR("read stdin: {}", std::strerror(errno));
      stdin_eof_ = true;
    }
  }

  void OnData(std::span<const uint8_t> d) {
    if (out_buf_.empty()) {
      size_t off = 0;
      while (off < d.size()) {
        ssize_t w = ::write(STDOUT_FILENO, d.data() + off, d.size() - off);
        if (w > 0) {
          off += static_cast<size_t>(w);
        } else if (w < 0 && errno == EINTR) {
          continue;
        } else {
          if (w < 0 && errno != EAGAIN)
            return Fail(fmt::format("write stdout: {}", strerror(errno)));
          break;
        }
      }
      d = d.subspan(off);
    }
    if (d.empty()) return;
    // stdout is full: keep this chunk (it was delivered) and stop reading the stream, so
    // the credit we return stops and the peer stops sending.
    out_buf_.insert(out_buf_.end(), d.begin(), d.end());
    stream_->PauseReading();
    SetOutInterest(true);
  }

  void FlushOut() {
    while (!out_buf_.empty()) {
      ssize_t w = ::write(STDOUT_FILENO, out_buf_.data(), out_buf_.size());
      if (w > 0) {
        out_buf_.erase(out_buf_.begin(), out_buf_.begin() + w);
      } else if (w < 0 && errno == EINTR) {
        continue;
      } else {
        if (w < 0 && errno != EAGAIN) return Fail(fmt::format("write stdout: {}", strerror(errno)));
        return;  // still full; EPOLLOUT stays armed
      }
    }
    SetOutInterest(false);
    if (stream_ != nullptr && !finished_) stream_->ResumeReading();
    MaybeDone();
  }

  void OnClosed(const Status& st) {
    closed_ = true;
    if (!st.ok() && !(peer_eof_ && shutdown_sent_)) {
      return Fail(st.error().code == ECONNRESET ? "connection reset by peer"
                                                : st.error().ToString());
    }
    peer_eof_ = true;
    MaybeDone();
  }

  void MaybeDone() {
    if (finished_ || !peer_eof_ || !out_buf_.empty()) return;
    // After the peer's EOF we keep sending stdin unless the connection is gone.
    if (!stdin_eof_ && !closed_) return;
    Finish(0);
  }

  void Fail(const std::string& why) {
    if (finished_) return;
    std::fprintf(stderr, "vguest: %s\n", why.c_str());
    Finish(1);
  }

  void Finish(int code) {
    finished_ = true;
    *exit_code_ = code;
    if (stream_ != nullptr) {
      stream_->Close();  // no callbacks after this
      stream_ = nullptr;
    }
    loop_->Stop();
  }

  EventLoop* loop_;
  int* exit_code_;
  const bool messages_;
  Stream* stream_ = nullptr;
  std::vector<uint8_t> in_buf_;
  size_t in_off_ = 0;
  std::vector<uint8_t> out_buf_;
  bool in_pollable_ = false, in_polled_ = false;
  bool out_pollable_ = false, out_polled_ = false;
  bool stdin_eof_ = false;
  bool shutdown_sent_ = false;
  bool peer_eof_ = false;
  bool closed_ = false;
  bool finished_ = false;
};

std::string FeatureNames(uint64_t f) {
  std::string out;
  auto add = [&](int bit, const char* name) {
    if (f & (uint64_t{1} << bit)) out += std::string(out.empty() ? "" : " ") + name;
  };
  add(0, "VIRTIO_VSOCK_F_STREAM");
  add(1, "VIRTIO_VSOCK_F_SEQPACKET");
  add(virtio::VIRTIO_F_NOTIFY_ON_EMPTY, "VIRTIO_F_NOTIFY_ON_EMPTY");
  add(virtio::VIRTIO_RING_F_INDIRECT_DESC, "VIRTIO_RING_F_INDIRECT_DESC");
  add(virtio::VIRTIO_RING_F_EVENT_IDX, "VIRTIO_RING_F_EVENT_IDX");
  add(vhost_user::VHOST_USER_F_PROTOCOL_FEATURES, "VHOST_USER_F_PROTOCOL_FEATURES");
  add(virtio::VIRTIO_F_VERSION_1, "VIRTIO_F_VERSION_1");
  return out;
}

std::string ProtocolFeatureNames(uint64_t f) {
  std::string out;
  auto add = [&](int bit, const char* name) {
    if (f & (uint64_t{1} << bit)) out += std::string(out.empty() ? "" : " ") + name;
  };
  add(vhost_user::VHOST_USER_PROTOCOL_F_MQ, "MQ");
  add(vhost_user::VHOST_USER_PROTOCOL_F_REPLY_ACK, "REPLY_ACK");
  add(vhost_user::VHOST_USER_PROTOCOL_F_CONFIG, "CONFIG");
  return out;
}

// Restores the fd flags we changed (O_NONBLOCK is shared with whoever else holds the fd).
struct FlagGuard {
  int fd;
  int flags;
  explicit FlagGuard(int f) : fd(f), flags(::fcntl(f, F_GETFL)) {
    if (flags >= 0) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  }
  ~FlagGuard() {
    if (flags >= 0) ::fcntl(fd, F_SETFL, flags);
  }
};

int Main(int argc, char** argv) {
  CLI::App app{
      "vguest: a virtual guest that attaches to a vhost-user-vsock backend (as QEMU plus a "
      "Linux 6.1 guest) and relays one vsock stream to stdin/stdout.\n"
      "Exit status: 0 clean close (or SIGINT/SIGTERM), 1 reset/refused/timeout, 2 usage or "
      "attach error."};
  app.set_version_flag("--version", "vguest 0.1.0");
  GuestOptions options;
  std::string log_level = "warn";
  uint32_t connect_timeout_ms = 2000;
  uint32_t attach_timeout_ms = 0;
  bool rx_combined = false;
  bool no_event_idx = false;
  app.add_option("--socket", options.socket_path, "vhost-user socket of the backend")->required();
  app.add_option("--log-level", log_level, "debug, info, warn, error or off")
      ->capture_default_str();
  app.add_option("--queue-size", options.queue_size, "virtqueue size (power of two)")
      ->capture_default_str();
  app.add_option("--buf-alloc", options.buf_alloc, "per-socket receive buffer (buf_alloc)")
      ->capture_default_str();
  app.add_option("--connect-timeout-ms", connect_timeout_ms, "vsock connect timeout")
      ->capture_default_str();
  app.add_option("--attach-timeout-ms", attach_timeout_ms,
                 "keep retrying the vhost-user socket this long (0: once, like QEMU)")
      ->capture_default_str();
  app.add_flag("--rx-combined", rx_combined,
               "post rx buffers as one descriptor holding header and data (Linux 6.2+)");
  app.add_flag("--no-event-idx", no_event_idx, "do not ack VIRTIO_RING_F_EVENT_IDX");
  app.require_subcommand(1);
  uint32_t port = 0;
  bool seqpacket = false;
  const char* kSeqpacketHelp =
      "SOCK_SEQPACKET: each stdin read is one message (at most 64 KiB), each message "
      "received is written out whole";
  auto* connect = app.add_subcommand("connect", "connect to host port PORT and relay stdio");
  connect->add_option("PORT", port, "host port")->required();
  connect->add_flag("--seqpacket", seqpacket, kSeqpacketHelp);
  auto* listen = app.add_subcommand("listen", "accept one connection on guest port PORT");
  listen->add_option("PORT", port, "guest port")->required();
  listen->add_flag("--seqpacket", seqpacket, kSeqpacketHelp);
  auto* info = app.add_subcommand("info", "print the CID and the negotiated features");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  SetLogTag("vguest");
  LogLevel level;
  if (!ParseLogLevel(log_level, &level)) {
    std::fprintf(stderr, "vguest: bad --log-level '%s'\n", log_level.c_str());
    return 2;
  }
  SetLogLevel(level);
  options.connect_timeout = std::chrono::milliseconds(connect_timeout_ms);
  options.attach_timeout = std::chrono::milliseconds(attach_timeout_ms);
  options.rx_combined_desc = rx_combined;
  options.event_idx = !no_event_idx;

  ::signal(SIGPIPE, SIG_IGN);
  auto loop = EventLoop::Create();
  if (!loop.ok()) {
    std::fprintf(stderr, "vguest: %s\n", loop.error().ToString().c_str());
    return 2;
  }
  g_loop = loop->get();
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  auto guest = Guest::Attach(loop->get(), options);
  if (!guest.ok()) {
    std::fprintf(stderr, "vguest: %s\n", guest.error().ToString().c_str());
    return 2;
  }
  if (info->parsed()) {
    std::printf("cid %llu\n", static_cast<unsigned long long>((*guest)->cid()));
    std::printf("device features 0x%llx %s\n",
                static_cast<unsigned long long>((*guest)->device_features()),
                FeatureNames((*guest)->device_features()).c_str());
    std::printf("acked features 0x%llx %s\n",
                static_cast<unsigned long long>((*guest)->acked_features()),
                FeatureNames((*guest)->acked_features()).c_str());
    std::printf("protocol features 0x%llx %s\n",
                static_cast<unsigned long long>((*guest)->protocol_features()),
                ProtocolFeatureNames((*guest)->protocol_features()).c_str());
    return 0;
  }

  int exit_code = 0;
  FlagGuard in_flags(STDIN_FILENO);
  FlagGuard out_flags(STDOUT_FILENO);
  Relay relay(loop->get(), &exit_code, seqpacket);
  const uint16_t type =
      seqpacket ? vsock::VIRTIO_VSOCK_TYPE_SEQPACKET : vsock::VIRTIO_VSOCK_TYPE_STREAM;
  Guest* g = guest->get();
  if (connect->parsed()) {
    g->Connect(
        port,
        [&](Stream* s, const Status& st) {
          if (!st.ok()) {
            const char* what = st.error().code == ECONNRESET  ? "refused (RST)"
                               : st.error().code == ETIMEDOUT ? "timed out"
                                                              : "failed";
            std::fprintf(stderr, "vguest: connect to host port %u %s: %s\n", port, what,
                         st.error().ToString().c_str());
            s->Close();
            exit_code = 1;
            (*loop)->Stop();
            return;
          }
          relay.Start(s);
        },
        vsock::VMADDR_CID_HOST, type);
  } else if (listen->parsed()) {
    Status st = g->Listen(
        port,
        [&, g](Stream* s) {
          g->Unlisten(port);
          relay.Start(s);
        },
        type);
    if (!st.ok()) {
      std::fprintf(stderr, "vguest: listen: %s\n", st.error().ToString().c_str());
      return 2;
    }
  }
  (*loop)->Run();
  // Like a kernel after close(): what we sent still reaches the device before we detach.
  bool drained = false;
  g->Drain(std::chrono::seconds(5), [&] { drained = true; });
  while (!drained) (*loop)->RunOnce(100);
  g_loop = nullptr;
  // Stream and guest go away here; the backend sees the frontend disconnect.
  return exit_code;
}

}  // namespace
}  // namespace vsockd::vguest

int main(int argc, char** argv) {
  return vsockd::RunMain("vguest", vsockd::vguest::Main, argc, argv);
}
