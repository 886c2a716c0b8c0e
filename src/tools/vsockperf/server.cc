// vsockperf server: accepts test connections, reads each one's TestHeader and plays its part
// (sink + result record, source, echo, or one-byte answer).
#include <fmt/format.h>

#include <chrono>
#include <unordered_map>
#include <vector>

#include "base/log.h"
#include "tools/vsockperf/perf.h"
#include "tools/vsockperf/protocol.h"
#include "tools/vsockperf/report.h"

namespace vsockd::vsockperf {
namespace {

using Clock = std::chrono::steady_clock;

// An echo client that does not read its echoes may not make us buffer without bound.
constexpr size_t kMaxEchoBacklog = 4u << 20;

class Server;

// One accepted test connection.
class Session {
 public:
  Session(Server* server, std::shared_ptr<Conn> conn) : server_(server), conn_(std::move(conn)) {}
  void Start();
  void Close();

 private:
  void OnData(std::span<const uint8_t> d);
  void OnEof();
  void OnHeader();
  void Pump();
  // Writes out_ from out_off_; true once it is all out.
  bool Flush();
  void AfterFlush();
  void Drop(const std::string& why);

  Server* server_;
  std::shared_ptr<Conn> conn_;
  std::vector<uint8_t> header_buf_;
  bool have_header_ = false;
  TestHeader h_;
  // Sink.
  uint64_t received_ = 0;
  Clock::time_point first_{};
  // Source.
  uint64_t sent_ = 0;
  bool stop_ = false;
  bool source_done_ = false;
  Clock::time_point source_start_{};
  std::vector<uint8_t> chunk_;
  EventLoop::TimerId timer_ = 0;
  // Pending output (result record, echo bytes, the connect answer).
  std::vector<uint8_t> out_;
  size_t out_off_ = 0;
  bool close_after_flush_ = false;
  bool closed_ = false;
  friend class Server;
};

class Server {
 public:
  Server(EventLoop* loop, Transport* transport, FILE* out)
      : loop_(loop), transport_(transport), out_(out) {}

  int Run() {
    Status st = transport_->Listen([this](std::shared_ptr<Conn> conn) {
      auto session = std::make_shared<Session>(this, std::move(conn));
      sessions_[session.get()] = session;
      session->Start();
    });
    if (!st.ok()) {
      std::fprintf(stderr, "vsockperf: %s\n", st.error().ToString().c_str());
      return 1;
    }
    Line("-----------------------------------------------------------");
    Line("Server listening on {} ({})", transport_->description(), transport_->name());
    Line("-----------------------------------------------------------");
    loop_->Run();
    for (auto& [p, s] : sessions_) s->Close();
    return 0;
  }

  template <typename... Args>
  void Line(fmt::format_string<Args...> f, Args&&... args) {
    std::string s = fmt::format(f, std::forward<Args>(args)...);
    std::fprintf(out_, "%s\n", s.c_str());
    std::fflush(out_);
  }

  // Drops the session after the current batch (it may be on the stack).
  void Retire(Session* s) {
    loop_->Defer([this, s] { sessions_.erase(s); });
  }

  EventLoop* loop() { return loop_; }

 private:
  EventLoop* loop_;
  Transport* transport_;
  FILE* out_;
  std::unordered_map<Session*, std::shared_ptr<Session>> sessions_;
};

void Session::Start() {
  conn_->on_data = [this](std::span<const uint8_t> d) { OnData(d); };
  conn_->on_eof = [this] { OnEof(); };
  conn_->on_writable = [this] {
    if (have_header_ && h_.mode == Mode::kReceive && !source_done_) {
      Pump();
    } else if (Flush()) {
      AfterFlush();
    }
  };
  conn_->on_error = [this](const Error& e) { Drop(e.ToString()); };
}

void Session::Close() {
  if (closed_) return;
  closed_ = true;
  if (timer_ != 0) server_->loop()->CancelTimer(timer_);
  conn_->Close();
  server_->Retire(this);
}

void Session::Drop(const std::string& why) {
  if (closed_) return;
  LOG_WARN("dropped a test connection: {}", why);
  Close();
}

void Session::OnData(std::span<const uint8_t> d) {
  if (closed_) return;
  if (!have_header_) {
    size_t take = std::min(d.size(), kHeaderSize - header_buf_.size());
    header_buf_.insert(header_buf_.end(), d.begin(), d.begin() + take);
    d = d.subspan(take);
    if (header_buf_.size() < kHeaderSize) return;
    auto h = DecodeHeader(header_buf_);
    if (!h.ok()) return Drop(h.error().ToString());
    h_ = *h;
    have_header_ = true;
    OnHeader();
    if (closed_ || d.empty()) return;
  }
  switch (h_.mode) {
    case Mode::kSend:
      if (received_ == 0) first_ = Clock::now();
      received_ += d.size();
      break;
    case Mode::kEcho: {
      if (out_.size() - out_off_ + d.size() > kMaxEchoBacklog) {
        return Drop("echo client does not read its echoes");
      }
      bool idle = out_off_ >= out_.size();
      out_.insert(out_.end(), d.begin(), d.end());
      if (idle) Flush();
      break;
    }
    case Mode::kReceive:
    case Mode::kConnect:
      // The client has nothing to say after its header in these modes: ignore it.
      break;
  }
}

void Session::OnHeader() {
  switch (h_.mode) {
    case Mode::kSend:
    case Mode::kEcho:
      break;
    case Mode::kReceive:
      chunk_.assign(h_.write_size, 0x5a);
      source_start_ = Clock::now();
      if (h_.duration_ms > 0) {
        timer_ = server_->loop()->AddTimer(std::chrono::milliseconds(h_.duration_ms), [this] {
          timer_ = 0;
          stop_ = true;
          Pump();
        });
      }
      Pump();
      break;
    case Mode::kConnect:
      out_.assign(1, 'a');
      close_after_flush_ = true;
      if (Flush()) AfterFlush();
      break;
  }
}

void Session::Pump() {
  if (closed_ || source_done_) return;
  while (true) {
    if (stop_ || (h_.bytes > 0 && sent_ >= h_.bytes)) {
      source_done_ = true;
      conn_->ShutdownWrite();
      double secs = std::chrono::duration<double>(Clock::now() - source_start_).count();
      server_->Line("{}", IntervalLine(static_cast<int>(h_.stream_id), 0, secs, sent_,
                                       fmt::format("sender   (test {:016x}, stream {}/{})",
                                                   h_.test_id, h_.stream_id, h_.streams)));
      return;  // the client closes when it has it all
    }
    size_t want = chunk_.size();
    if (h_.bytes > 0) want = static_cast<size_t>(std::min<uint64_t>(want, h_.bytes - sent_));
    size_t n = conn_->Write(chunk_.data(), want);
    sent_ += n;
    if (n < want) return;
  }
}

bool Session::Flush() {
  while (out_off_ < out_.size()) {
    size_t n = conn_->Write(out_.data() + out_off_, out_.size() - out_off_);
    if (n == 0) return false;
    out_off_ += n;
  }
  out_.clear();
  out_off_ = 0;
  return true;
}

void Session::AfterFlush() {
  if (close_after_flush_) {
    conn_->ShutdownWrite();
    Close();
  }
}

void Session::OnEof() {
  if (closed_) return;
  if (!have_header_) return Drop("the client closed before its test header");
  switch (h_.mode) {
    case Mode::kSend: {
      double secs =
          received_ > 0 ? std::chrono::duration<double>(Clock::now() - first_).count() : 0;
      ResultRecord r{received_, static_cast<uint64_t>(secs * 1e9)};
      auto rec = EncodeResult(r);
      out_.assign(rec.begin(), rec.end());
      out_off_ = 0;
      close_after_flush_ = true;
      server_->Line("{}", IntervalLine(static_cast<int>(h_.stream_id), 0, secs, received_,
                                       fmt::format("receiver (test {:016x}, stream {}/{})",
                                                   h_.test_id, h_.stream_id, h_.streams)));
      if (Flush()) AfterFlush();
      break;
    }
    case Mode::kEcho:
      close_after_flush_ = true;
      if (Flush()) AfterFlush();
      break;
    case Mode::kReceive:
    case Mode::kConnect:
      if (h_.mode == Mode::kReceive && !source_done_) {
        return Drop("the client closed during a reverse test");
      }
      if (out_off_ >= out_.size()) Close();
      break;
  }
}

}  // namespace

int RunServer(EventLoop* loop, Transport* transport, FILE* out) {
  Server server(loop, transport, out);
  return server.Run();
}

}  // namespace vsockd::vsockperf
