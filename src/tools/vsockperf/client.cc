// vsockperf client: throughput (-R, -P), latency and connect-rate tests over a Transport.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "tools/vsockperf/perf.h"
#include "tools/vsockperf/protocol.h"
#include "tools/vsockperf/report.h"

namespace vsockd::vsockperf {
namespace {

using Clock = std::chrono::steady_clock;

double Secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Bytes waiting to go out on a Conn that took only part of them.
struct OutBuf {
  std::vector<uint8_t> data;
  size_t off = 0;
  void Set(std::span<const uint8_t> bytes) {
    data.assign(bytes.begin(), bytes.end());
    off = 0;
  }
  // True once everything went out.
  bool Flush(Conn& c) {
    while (off < data.size()) {
      size_t n = c.Write(data.data() + off, data.size() - off);
      if (n == 0) return false;
      off += n;
    }
    data.clear();
    off = 0;
    return true;
  }
};

struct PerfStream {
  int id = 0;
  std::shared_ptr<Conn> conn;
  OutBuf out;
  // Sender side (forward).
  uint64_t quota = std::numeric_limits<uint64_t>::max();
  uint64_t sent = 0;
  bool sending_done = false;
  Clock::time_point send_end{};
  // Receiver side (reverse).
  uint64_t received = 0;
  bool got_first = false;
  Clock::time_point first_rx{}, eof_at{};
  // Forward: the server's result record.
  std::vector<uint8_t> result_buf;
  std::optional<ResultRecord> result;
  uint64_t interval_bytes = 0;
  bool done = false;
};

class Client {
 public:
  Client(EventLoop* loop, Transport* transport, const ClientOptions& o, FILE* out)
      : loop_(loop), transport_(transport), o_(o), out_(out) {
    std::random_device rd;
    test_id_ = (static_cast<uint64_t>(rd()) << 32) | rd();
    by_time_ = o_.kind == TestKind::kThroughput ? o_.bytes == 0 : o_.count == 0;
  }

  int Run() {
    if (!o_.json) {
      Print("Connecting to {} ({})", transport_->description(), transport_->name());
    }
    switch (o_.kind) {
      case TestKind::kThroughput:
        ConnectNextStream();
        break;
      case TestKind::kLatency:
        StartLatency();
        break;
      case TestKind::kConnectRate:
        StartConnectRate();
        break;
    }
    loop_->Run();
    if (!finished_) {
      // The loop was stopped from outside (a signal).
      std::fprintf(stderr, "vsockperf: interrupted\n");
      return 1;
    }
    return exit_code_;
  }

 private:
  template <typename... Args>
  void Print(fmt::format_string<Args...> f, Args&&... args) {
    if (o_.json) return;
    std::string s = fmt::format(f, std::forward<Args>(args)...);
    std::fprintf(out_, "%s\n", s.c_str());
    std::fflush(out_);
  }

  TestHeader MakeHeader(Mode mode, uint32_t stream_id) const {
    TestHeader h;
    h.mode = mode;
    h.stream_id = stream_id;
    h.streams = o_.kind == TestKind::kThroughput ? o_.streams : 1;
    h.write_size = o_.write_size;
    h.msg_size = o_.msg_size;
    h.test_id = test_id_;
    if (mode == Mode::kReceive) {
      if (o_.bytes > 0) {
        h.bytes = StreamQuota(stream_id);
      } else {
        h.duration_ms = static_cast<uint64_t>(std::llround(o_.seconds * 1000));
        if (h.duration_ms == 0) h.duration_ms = 1;
      }
    }
    return h;
  }

  // -n is the total over all streams; the first stream takes the remainder.
  uint64_t StreamQuota(uint32_t stream_id) const {
    uint64_t each = o_.bytes / o_.streams;
    return stream_id == 1 ? each + o_.bytes % o_.streams : each;
  }

  void Fail(const Error& e) {
    if (finished_) return;
    finished_ = true;
    exit_code_ = 1;
    std::fprintf(stderr, "vsockperf: %s\n", e.ToString().c_str());
    for (auto& s : streams_) {
      if (s->conn) s->conn->Close();
    }
    if (latency_conn_) latency_conn_->Close();
    if (cr_conn_) cr_conn_->Close();
    loop_->Stop();
  }

  void StartTimers() {
    t0_ = last_tick_ = Clock::now();
    if (o_.interval > 0) ScheduleTick();
    if (by_time_) {
      loop_->AddTimer(std::chrono::milliseconds(std::llround(o_.seconds * 1000)),
                      [this] { OnTimeUp(); });
    }
  }

  void ScheduleTick() {
    next_tick_ += o_.interval;
    auto due = t0_ + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(next_tick_));
    auto delay = std::chrono::duration_cast<std::chrono::milliseconds>(due - Clock::now());
    tick_timer_ = loop_->AddTimer(std::max(delay, std::chrono::milliseconds(1)), [this] {
      tick_timer_ = 0;
      if (finished_) return;
      Tick();
      ScheduleTick();
    });
  }

  void OnTimeUp() {
    if (finished_) return;
    stop_ = true;
    // What is still in flight takes well under this; a silent peer must not hang us.
    loop_->AddTimer(std::chrono::seconds(10), [this] {
      if (!finished_) {
        Fail(MakeError(ETIMEDOUT, "the test did not finish within 10 s of its end"));
      }
    });
    if (o_.kind == TestKind::kThroughput && !o_.reverse) {
      for (auto& s : streams_) Pump(*s);
    }
    if (o_.kind == TestKind::kConnectRate && !cr_conn_) FinishConnectRate();
  }

  void Tick() {
    Clock::time_point now = Clock::now();
    double start = Secs(last_tick_ - t0_), end = Secs(now - t0_);
    last_tick_ = now;
    if (end - start <= 0) return;
    switch (o_.kind) {
      case TestKind::kThroughput:
        TickThroughput(start, end);
        break;
      case TestKind::kLatency:
        TickLatency(start, end);
        break;
      case TestKind::kConnectRate:
        TickConnectRate(start, end);
        break;
    }
  }

  void PrintTableHeader() { Print("[ ID] Interval           Transfer     Bitrate"); }

  // ---- throughput ----------------------------------------------------------------------

  void ConnectNextStream() {
    if (streams_.size() == o_.streams) return StartThroughput();
    transport_->Connect([this](Result<std::shared_ptr<Conn>> r) {
      if (finished_) {
        if (r.ok()) (*r)->Close();
        return;
      }
      if (!r.ok()) return Fail(r.error());
      auto s = std::make_unique<PerfStream>();
      s->id = static_cast<int>(streams_.size()) + 1;
      s->conn = std::move(*r);
      streams_.push_back(std::move(s));
      ConnectNextStream();
    });
  }

  void StartThroughput() {
    if (!o_.json) {
      Print("[ ID] {} {} stream{}, {}-byte writes, {}",
            o_.reverse ? "Reverse mode:" : "Sending:", o_.streams, o_.streams > 1 ? "s" : "",
            o_.write_size,
            o_.bytes > 0 ? FormatBytes(static_cast<double>(o_.bytes)) + " total"
                         : fmt::format("{:.2f} seconds", o_.seconds));
      PrintTableHeader();
    }
    buf_.assign(o_.write_size, 0x5a);
    StartTimers();
    for (auto& sp : streams_) {
      PerfStream* s = sp.get();
      auto header = EncodeHeader(
          MakeHeader(o_.reverse ? Mode::kReceive : Mode::kSend, static_cast<uint32_t>(s->id)));
      s->out.Set(header);
      s->conn->on_error = [this](const Error& e) { Fail(e); };
      if (o_.reverse) {
        s->conn->on_writable = [s] { s->out.Flush(*s->conn); };
        s->conn->on_data = [s](std::span<const uint8_t> d) {
          if (!s->got_first) {
            s->got_first = true;
            s->first_rx = Clock::now();
          }
          s->received += d.size();
          s->interval_bytes += d.size();
        };
        s->conn->on_eof = [this, s] {
          s->eof_at = Clock::now();
          s->done = true;
          if (o_.bytes > 0 && s->received != StreamQuota(static_cast<uint32_t>(s->id))) {
            return Fail(MakeError(EPROTO, "stream {}: received {} of {} bytes", s->id, s->received,
                                  StreamQuota(static_cast<uint32_t>(s->id))));
          }
          s->conn->ShutdownWrite();
          s->conn->Close();
          CheckThroughputDone();
        };
        s->out.Flush(*s->conn);
      } else {
        if (o_.bytes > 0) s->quota = StreamQuota(static_cast<uint32_t>(s->id));
        s->conn->on_writable = [this, s] { Pump(*s); };
        s->conn->on_data = [this, s](std::span<const uint8_t> d) {
          if (s->result_buf.size() + d.size() > kResultSize) {
            return Fail(
                MakeError(EPROTO, "stream {}: the server sent more than a result record", s->id));
          }
          s->result_buf.insert(s->result_buf.end(), d.begin(), d.end());
          if (s->result_buf.size() < kResultSize) return;
          auto r = DecodeResult(s->result_buf);
          if (!r.ok()) return Fail(r.error());
          s->result = *r;
          s->done = true;
          s->conn->Close();
          CheckThroughputDone();
        };
        s->conn->on_eof = [this, s] {
          if (!s->result) {
            Fail(MakeError(EPROTO,
                           "stream {}: the server closed without a result (a vsockperf server?)",
                           s->id));
          }
        };
        Pump(*s);
      }
    }
  }

  void Pump(PerfStream& s) {
    if (finished_ || s.sending_done) return;
    if (!s.out.Flush(*s.conn)) return;
    while (true) {
      if (stop_ || s.sent >= s.quota) {
        s.sending_done = true;
        s.send_end = Clock::now();
        s.conn->ShutdownWrite();
        return;
      }
      size_t want = static_cast<size_t>(std::min<uint64_t>(o_.write_size, s.quota - s.sent));
      size_t n = s.conn->Write(buf_.data(), want);
      s.sent += n;
      s.interval_bytes += n;
      if (n < want) return;  // on_writable brings us back
    }
  }

  void TickThroughput(double start, double end) {
    uint64_t sum = 0;
    std::string per_stream;
    for (auto& s : streams_) {
      Print("{}", IntervalLine(s->id, start, end, s->interval_bytes));
      if (!per_stream.empty()) per_stream += ", ";
      per_stream +=
          fmt::format(R"({{"id": {}, "bytes": {}, "bits_per_second": {}}})", s->id,
                      s->interval_bytes, JsonNumber(s->interval_bytes * 8.0 / (end - start)));
      sum += s->interval_bytes;
      s->interval_bytes = 0;
    }
    if (streams_.size() > 1) Print("{}", IntervalLine(-1, start, end, sum));
    intervals_.push_back(fmt::format(
        R"({{"start": {}, "end": {}, "seconds": {}, "bytes": {}, "bits_per_second": {}, )"
        R"("streams": [{}]}})",
        JsonNumber(start), JsonNumber(end), JsonNumber(end - start), sum,
        JsonNumber(sum * 8.0 / (end - start)), per_stream));
  }

  void CheckThroughputDone() {
    for (auto& s : streams_) {
      if (!s->done) return;
    }
    FinishThroughput();
  }

  static std::string Figure(uint64_t bytes, double seconds) {
    return fmt::format(R"({{"bytes": {}, "seconds": {}, "bits_per_second": {}}})", bytes,
                       JsonNumber(seconds), JsonNumber(seconds > 0 ? bytes * 8.0 / seconds : 0));
  }

  void EndTest() {
    finished_ = true;
    if (tick_timer_ != 0) loop_->CancelTimer(tick_timer_);
    loop_->Stop();
  }

  // The last, partial interval (what happened since the last tick).
  void FinalTick(bool any_bytes) {
    if (o_.interval <= 0) return;
    double start = Secs(last_tick_ - t0_), end = Secs(Clock::now() - t0_);
    // As iperf, a sliver shorter than a tenth of an interval is not worth a line (the
    // summary has its bytes).
    if (any_bytes && end - start >= 0.1 * o_.interval) Tick();
  }

  void FinishThroughput() {
    bool pending = false;
    for (auto& s : streams_) pending |= s->interval_bytes > 0;
    FinalTick(pending);
    EndTest();
    Print("- - - - - - - - - - - - - - - - - - - - - - - - -");
    PrintTableHeader();
    std::string per_stream;
    uint64_t sent = 0, received = 0;
    double send_secs = 0, recv_secs = 0;
    Clock::time_point first_rx = Clock::time_point::max(), last_eof{};
    for (auto& s : streams_) {
      std::string sender = "null", receiver;
      if (!o_.reverse) {
        double ss = Secs(s->send_end - t0_), rs = s->result->nanos / 1e9;
        Print("{}", IntervalLine(s->id, 0, ss, s->sent, "sender"));
        Print("{}", IntervalLine(s->id, 0, rs, s->result->bytes, "receiver"));
        sender = Figure(s->sent, ss);
        receiver = Figure(s->result->bytes, rs);
        sent += s->sent;
        received += s->result->bytes;
        send_secs = std::max(send_secs, ss);
        recv_secs = std::max(recv_secs, rs);
      } else {
        double rs = s->got_first ? Secs(s->eof_at - s->first_rx) : 0;
        Print("{}", IntervalLine(s->id, 0, rs, s->received, "receiver"));
        receiver = Figure(s->received, rs);
        received += s->received;
        if (s->got_first) first_rx = std::min(first_rx, s->first_rx);
        last_eof = std::max(last_eof, s->eof_at);
      }
      if (!per_stream.empty()) per_stream += ", ";
      per_stream +=
          fmt::format(R"({{"id": {}, "sender": {}, "receiver": {}}})", s->id, sender, receiver);
    }
    if (o_.reverse && first_rx != Clock::time_point::max()) recv_secs = Secs(last_eof - first_rx);
    if (streams_.size() > 1) {
      if (!o_.reverse) Print("{}", IntervalLine(-1, 0, send_secs, sent, "sender"));
      Print("{}", IntervalLine(-1, 0, recv_secs, received, "receiver"));
    }
    Print("");
    Print("vsockperf done.");
    std::string summary = fmt::format(R"({{"sender": {}, "receiver": {}, "streams": [{}]}})",
                                      o_.reverse ? std::string("null") : Figure(sent, send_secs),
                                      Figure(received, recv_secs), per_stream);
    EmitJson("throughput", summary);
  }

  // ---- latency -------------------------------------------------------------------------

  void StartLatency() {
    transport_->Connect([this](Result<std::shared_ptr<Conn>> r) {
      if (finished_) return;
      if (!r.ok()) return Fail(r.error());
      latency_conn_ = std::move(*r);
      if (!o_.json) {
        Print("Latency: {}-byte messages, {}", o_.msg_size,
              o_.count > 0 ? fmt::format("{} round trips", o_.count)
                           : fmt::format("{:.2f} seconds", o_.seconds));
        Print("[ ID] Interval           Round trips   p50        p99        max");
      }
      msg_.assign(o_.msg_size, 0x42);
      latency_conn_->on_error = [this](const Error& e) { Fail(e); };
      latency_conn_->on_writable = [this] { lat_out_.Flush(*latency_conn_); };
      latency_conn_->on_eof = [this] {
        Fail(MakeError(EPROTO, "the server closed the latency connection"));
      };
      latency_conn_->on_data = [this](std::span<const uint8_t> d) { OnEcho(d.size()); };
      StartTimers();
      auto header = EncodeHeader(MakeHeader(Mode::kEcho, 1));
      lat_out_.Set(header);
      lat_out_.data.insert(lat_out_.data.end(), msg_.begin(), msg_.end());
      sent_at_ = Clock::now();
      lat_out_.Flush(*latency_conn_);
    });
  }

  void OnEcho(size_t n) {
    if (finished_) return;
    echoed_ += n;
    if (echoed_ > o_.msg_size) {
      return Fail(MakeError(EPROTO, "the server echoed more than was sent"));
    }
    if (echoed_ < o_.msg_size) return;
    echoed_ = 0;
    double us = Secs(Clock::now() - sent_at_) * 1e6;
    samples_.push_back(us);
    interval_samples_.push_back(us);
    if (stop_ || (o_.count > 0 && samples_.size() >= o_.count)) return FinishLatency();
    sent_at_ = Clock::now();
    lat_out_.Set(msg_);
    lat_out_.Flush(*latency_conn_);
  }

  void TickLatency(double start, double end) {
    Percentiles p = ComputePercentiles(interval_samples_);
    interval_samples_.clear();
    Print("[{:3d}] {:6.2f}-{:<6.2f} sec  {:>11}   {:>7.1f} us {:>7.1f} us {:>7.1f} us", 1, start,
          end, p.count, p.p50_us, p.p99_us, p.max_us);
    intervals_.push_back(
        fmt::format(R"({{"start": {}, "end": {}, "seconds": {}, "round_trips": {}, "p50_us": {}, )"
                    R"("p99_us": {}, "max_us": {}}})",
                    JsonNumber(start), JsonNumber(end), JsonNumber(end - start), p.count,
                    JsonNumber(p.p50_us), JsonNumber(p.p99_us), JsonNumber(p.max_us)));
  }

  void FinishLatency() {
    FinalTick(!interval_samples_.empty());
    double secs = Secs(Clock::now() - t0_);
    EndTest();
    latency_conn_->ShutdownWrite();
    latency_conn_->Close();
    Percentiles p = ComputePercentiles(samples_);
    Print("- - - - - - - - - - - - - - - - - - - - - - - - -");
    Print("[{:3d}] {:6.2f}-{:<6.2f} sec  {} round trips of {} bytes", 1, 0.0, secs, p.count,
          o_.msg_size);
    Print(
        "      latency min {:.1f} us  p50 {:.1f} us  p99 {:.1f} us  max {:.1f} us  mean "
        "{:.1f} us",
        p.min_us, p.p50_us, p.p99_us, p.max_us, p.mean_us);
    Print("");
    Print("vsockperf done.");
    EmitJson("latency",
             fmt::format(R"({{"round_trips": {}, "seconds": {}, "min_us": {}, "p50_us": {}, )"
                         R"("p99_us": {}, "max_us": {}, "mean_us": {}}})",
                         p.count, JsonNumber(secs), JsonNumber(p.min_us), JsonNumber(p.p50_us),
                         JsonNumber(p.p99_us), JsonNumber(p.max_us), JsonNumber(p.mean_us)));
  }

  // ---- connect rate --------------------------------------------------------------------

  void StartConnectRate() {
    if (!o_.json) {
      Print("Connect rate: connect, send the test header, read one byte, close; {}",
            o_.count > 0 ? fmt::format("{} connections", o_.count)
                         : fmt::format("{:.2f} seconds", o_.seconds));
      Print("[ ID] Interval           Connections   Rate");
    }
    cr_header_ = EncodeHeader(MakeHeader(Mode::kConnect, 1));
    StartTimers();
    NextConnection();
  }

  void NextConnection() {
    if (finished_) return;
    if (stop_ || (o_.count > 0 && connections_ >= o_.count)) return FinishConnectRate();
    transport_->Connect([this](Result<std::shared_ptr<Conn>> r) {
      if (finished_) {
        if (r.ok()) (*r)->Close();
        return;
      }
      if (!r.ok()) return Fail(r.error());
      cr_conn_ = std::move(*r);
      cr_out_.Set(cr_header_);
      cr_conn_->on_error = [this](const Error& e) { Fail(e); };
      cr_conn_->on_writable = [this] { cr_out_.Flush(*cr_conn_); };
      cr_conn_->on_eof = [this] { Fail(MakeError(EPROTO, "the server closed without answering")); };
      cr_conn_->on_data = [this](std::span<const uint8_t>) {
        ++connections_;
        ++interval_connections_;
        cr_conn_->Close();
        // The Conn may still be on the stack: drop it after this batch.
        loop_->Defer([c = std::move(cr_conn_)] {});
        cr_conn_.reset();
        loop_->Defer([this] { NextConnection(); });
      };
      cr_out_.Flush(*cr_conn_);
    });
  }

  void TickConnectRate(double start, double end) {
    double rate = interval_connections_ / (end - start);
    Print("[{:3d}] {:6.2f}-{:<6.2f} sec  {:>11}   {:.0f} conn/sec", 1, start, end,
          interval_connections_, rate);
    intervals_.push_back(
        fmt::format(R"({{"start": {}, "end": {}, "seconds": {}, "connections": {}, )"
                    R"("connections_per_second": {}}})",
                    JsonNumber(start), JsonNumber(end), JsonNumber(end - start),
                    interval_connections_, JsonNumber(rate)));
    interval_connections_ = 0;
  }

  void FinishConnectRate() {
    if (finished_) return;
    FinalTick(interval_connections_ > 0);
    double secs = Secs(Clock::now() - t0_);
    EndTest();
    double rate = secs > 0 ? connections_ / secs : 0;
    Print("- - - - - - - - - - - - - - - - - - - - - - - - -");
    Print("[{:3d}] {:6.2f}-{:<6.2f} sec  {} connections  {:.0f} conn/sec", 1, 0.0, secs,
          connections_, rate);
    Print("");
    Print("vsockperf done.");
    EmitJson("connect_rate",
             fmt::format(R"({{"connections": {}, "seconds": {}, "connections_per_second": {}}})",
                         connections_, JsonNumber(secs), JsonNumber(rate)));
  }

  // ---- JSON ----------------------------------------------------------------------------

  void EmitJson(const char* mode, const std::string& summary) {
    if (!o_.json) return;
    std::string test = fmt::format(
        R"({{"mode": "{}", "transport": {}, "destination": {}, "reverse": {}, "streams": {}, )"
        R"("write_size": {}, "msg_size": {}, "duration_s": {}, "bytes": {}, "count": {}, )"
        R"("interval_s": {}, "test_id": "{:016x}"}})",
        mode, JsonString(transport_->name()), JsonString(transport_->description()), o_.reverse,
        o_.kind == TestKind::kThroughput ? o_.streams : 1, o_.write_size, o_.msg_size,
        by_time_ ? JsonNumber(o_.seconds) : std::string("null"), o_.bytes, o_.count,
        JsonNumber(o_.interval), test_id_);
    std::string intervals;
    for (size_t i = 0; i < intervals_.size(); ++i) {
      intervals += (i == 0 ? "\n    " : ",\n    ") + intervals_[i];
    }
    std::string doc = fmt::format(
        "{{\n  \"vsockperf\": {{\"version\": \"0.1.0\"}},\n  \"test\": {},\n  \"intervals\": "
        "[{}{}],\n  \"summary\": {}\n}}\n",
        test, intervals, intervals.empty() ? "" : "\n  ", summary);
    std::fputs(doc.c_str(), out_);
    std::fflush(out_);
  }

  EventLoop* loop_;
  Transport* transport_;
  ClientOptions o_;
  FILE* out_;
  uint64_t test_id_ = 0;
  bool by_time_ = true;
  bool stop_ = false;
  bool finished_ = false;
  int exit_code_ = 0;
  Clock::time_point t0_{}, last_tick_{};
  double next_tick_ = 0;
  EventLoop::TimerId tick_timer_ = 0;
  std::vector<std::string> intervals_;

  std::vector<std::unique_ptr<PerfStream>> streams_;
  std::vector<uint8_t> buf_;

  std::shared_ptr<Conn> latency_conn_;
  OutBuf lat_out_;
  std::vector<uint8_t> msg_;
  size_t echoed_ = 0;
  Clock::time_point sent_at_{};
  std::vector<double> samples_, interval_samples_;

  std::shared_ptr<Conn> cr_conn_;
  OutBuf cr_out_;
  std::array<uint8_t, kHeaderSize> cr_header_{};
  uint64_t connections_ = 0, interval_connections_ = 0;
};

}  // namespace

int RunClient(EventLoop* loop, Transport* transport, const ClientOptions& options, FILE* out) {
  Client client(loop, transport, options, out);
  return client.Run();
}

}  // namespace vsockd::vsockperf
