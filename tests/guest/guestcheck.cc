// guestcheck: the traffic checker that the VM tests (tests/vm/) run inside the test guest
// through its shell. Every data byte is the shared test pattern (tests/common/pattern.h), so
// the host side of a test can check what the guest received and vice versa by count and
// FNV-1a checksum, or byte for byte.
//
// All sockets go through libvsock, so the guest's kernel AF_VSOCK paths of libvsock are
// what gets exercised; with hybrid addresses (hvsock://PATH:PORT) the same program runs on a
// host against vsockd, which is how tests/guest/guestcheck_test.cc tests it (a build machine
// must never create an AF_VSOCK socket).
//
// Output: one machine-readable line `ok key=value ...` on stdout on success (exit 0); on a
// failed check a one-line reason `guestcheck: CMD: ...` on stderr (exit 1); usage errors
// exit 2. Progress lines (listening, connected, per-connection results) also go to stdout,
// line-buffered. Run `guestcheck --help` for the subcommands.
//
// Design: one single-threaded poll() loop over non-blocking libvsock Streams (and
// Connectors / a Listener), so 200 concurrent connections cost 200 fds, not 200 threads.
// Threading: main thread only.
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "base/run_main.h"
#include "tests/common/pattern.h"
#include "vsock/vsock.h"

namespace vsockd::guestcheck {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using testing::Fnv1aStream;
using testing::PatternStream;
using testing::PatternVerifier;

constexpr const char* kHelp =
    R"(guestcheck: vsock traffic checker for the VM tests (runs inside the test guest)

Usage: guestcheck COMMAND [ARGS] [OPTIONS]

Addresses use libvsock's syntax: vsock://CID:PORT (in a guest; CID `host` = 2, `local` = 1),
hvsock://PATH:PORT (vsockd's hybrid socket on a host), unix:PATH.
Sizes take an optional K, M or G suffix (powers of 1024). Every data byte is the shared
test pattern PatternBytes(n, seed); checksums are 64-bit FNV-1a, printed as 0x%016x.

Commands:
  send ADDR --bytes N [--seed S] [--chunk K] [--expect echo|none|any]
      Connect, write N pattern bytes (seed S, default 1) while reading, shut down the write
      side, read until EOF. --expect echo: what came back must be exactly the bytes sent;
      none: nothing may come back; any (default): just report it.
      -> ok sent=N sent_fnv=F received=M received_fnv=G ms=T
  echo-many ADDR --conns C --bytes N [--seed S] [--chunk K] [--connect-parallel P]
            [--no-barrier]
      C concurrent connections to an echo service; connection i sends N pattern bytes with
      seed S+i (default S = 1000) and checks the echo byte for byte. Connects are started
      at most P at a time (default 32); no data is sent before every connect has finished
      (so all C are open at once) unless --no-barrier. Failures: one stderr line each.
      -> ok conns=C bytes=N ms=T
  serve (--port P [--cid CID] | --listen ADDR) --mode echo|sink|source|hold
        [--bytes N] [--seed S] [--chunk K] [--count K] [--verify] [--progress N]
      Listen (default CID any) and serve K connections (default 1; 0 = forever), all
      concurrently. Prints `listening ADDR` once ready, `progress received=N conn=I` once a
      connection has received --progress N bytes (if given), then one line per connection:
        echo:   echoes everything, shuts down its write side after the peer's EOF
                -> echoed bytes=N conn=I peer=ADDR
        sink:   reads to EOF -> received bytes=N fnv=F conn=I peer=ADDR; with --bytes N the
                count must be N; with --verify the data must be the pattern of seed S
        source: writes N pattern bytes (seed S, default 1), shuts down its write side and
                reads until the peer's EOF -> sent bytes=N fnv=F conn=I peer=ADDR
        hold:   reads (discarding) until the connection ends
                -> closed reason=EOF|ERRNO so_error=ERRNO received=N conn=I peer=ADDR
      -> ok conns=K received=TOTAL sent=TOTAL (after K connections; exit 1 if any failed)
  recv ADDR [--bytes N] [--seed S] [--verify]
      Connect and read until EOF (the host is the source). --bytes N: the count must be N;
      --verify: the data must be the pattern of seed S (default 1).
      -> ok bytes=N fnv=F ms=T
  expect-refused ADDR [--errno NAME] [--max-ms M]
      The connect must fail. --errno NAME: and fail with that errno (e.g. ECONNREFUSED,
      ETIMEDOUT). libvsock reports the kernel's ECONNRESET for a vsock connect (a port
      nobody serves) as ECONNREFUSED; `--errno ECONNRESET` accepts exactly that case.
      --max-ms M: the failure must come within M ms.
      -> ok refused errno=NAME ms=T why="..."
  hold ADDR [--write] [--chunk K] [--expect EOF|ERRNO|error|any]
      Connect, print `connected local=ADDR peer=ADDR`, then read (discarding; with --write
      also keep writing pattern bytes) until the connection breaks, and print
        closed reason=EOF|ERRNO so_error=ERRNO received=N sent=M [write_error=ERRNO] ms=T
      (reason: how the read side ended; ms: from the connect to the break). Exit 1 (the
      connection broke) unless --expect names the outcome: EOF, an errno name (matching
      reason, so_error or write_error), `error` (the read side failed) or `any`.

Common options:
  --timeout-ms T   connect timeout (default 10000; also the vsock connect timeout)
  --idle-ms T      fail when no byte moves and no connect progresses for T ms
                   (default 60000; 0 = never; hold and serve default to never)
  --help           this text

Exit status: 0 success, 1 a failed check (reason on stderr), 2 usage error.
)";

// ---------------------------------------------------------------------------------------
// Small helpers

std::string ErrnoName(int e) {
  if (e == 0) return "0";
  const char* n = ::strerrorname_np(e);
  return n != nullptr ? n : "E" + std::to_string(e);
}

// The errno a libvsock error stands for: system codes are errno values; libvsock's own
// codes (vsock::errc) map to the std::errc condition they compare equal to.
int ErrnoOf(const std::error_code& ec) {
  if (ec.category() == std::system_category() || ec.category() == std::generic_category()) {
    return ec.value();
  }
  std::error_condition cond = ec.default_error_condition();
  if (cond.category() == std::generic_category()) return cond.value();
  return EIO;
}

std::string Hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%016" PRIx64, v);
  return buf;
}

// Quotes free text for the end of an output line (no newlines, no quotes inside).
std::string Quote(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    out.push_back(c == '"' ? '\'' : (u < 0x20 || u == 0x7f) ? ' ' : c);
  }
  return out + "\"";
}

int64_t MsSince(Clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t).count();
}

void Out(const std::string& line) {
  std::fputs((line + "\n").c_str(), stdout);
  std::fflush(stdout);
}

std::string g_command = "guestcheck";

// The one-line reason of a failed check.
int Fail(const std::string& why) {
  std::fflush(stdout);
  std::fprintf(stderr, "guestcheck: %s: %s\n", g_command.c_str(), why.c_str());
  return 1;
}

struct UsageError {
  std::string what;
};

// ---------------------------------------------------------------------------------------
// Command line

struct OptionSpec {
  const char* name;
  bool takes_value;
};

class Args {
 public:
  // Parses argv[first..] against `allowed`; at most `max_positional` positional words.
  static std::optional<Args> Parse(int argc, char** argv, int first,
                                   const std::vector<OptionSpec>& allowed, size_t max_positional,
                                   UsageError& err) {
    Args a;
    for (int i = first; i < argc; ++i) {
      std::string_view w = argv[i];
      if (w.size() > 2 && w.starts_with("--")) {
        std::string name(w.substr(2));
        std::optional<std::string> value;
        if (auto eq = name.find('='); eq != std::string::npos) {
          value = name.substr(eq + 1);
          name.resize(eq);
        }
        const OptionSpec* spec = nullptr;
        for (const auto& s : allowed) {
          if (name == s.name) spec = &s;
        }
        if (spec == nullptr) {
          err.what = "unknown option --" + name;
          return std::nullopt;
        }
        if (spec->takes_value && !value) {
          if (i + 1 >= argc) {
            err.what = "option --" + name + " needs a value";
            return std::nullopt;
          }
          value = argv[++i];
        }
        if (!spec->takes_value && value) {
          err.what = "option --" + name + " takes no value";
          return std::nullopt;
        }
        if (a.options_.count(name) != 0) {
          err.what = "option --" + name + " given twice";
          return std::nullopt;
        }
        a.options_[name] = value.value_or("");
      } else {
        if (a.positional_.size() >= max_positional) {
          err.what = "unexpected argument '" + std::string(w) + "'";
          return std::nullopt;
        }
        a.positional_.emplace_back(w);
      }
    }
    return a;
  }

  bool Has(const std::string& name) const { return options_.count(name) != 0; }
  const std::vector<std::string>& positional() const { return positional_; }

  std::optional<std::string> Text(const std::string& name) const {
    auto it = options_.find(name);
    if (it == options_.end()) return std::nullopt;
    return it->second;
  }

  // A number with an optional K/M/G (x1024) suffix.
  bool Size(const std::string& name, uint64_t& out, UsageError& err) const {
    auto t = Text(name);
    if (!t) return true;
    if (!ParseSize(*t, out)) {
      err.what = "--" + name + ": '" + *t + "' is not a size (a number, optionally K, M or G)";
      return false;
    }
    return true;
  }

  static bool ParseSize(const std::string& text, uint64_t& out) {
    if (text.empty() || text[0] < '0' || text[0] > '9') return false;
    errno = 0;
    char* end = nullptr;
    unsigned long long v = std::strtoull(text.c_str(), &end, 10);
    if (errno != 0) return false;
    std::string_view suffix(end);
    uint64_t mult = 1;
    if (suffix == "K" || suffix == "k" || suffix == "KiB") {
      mult = 1ull << 10;
    } else if (suffix == "M" || suffix == "m" || suffix == "MiB") {
      mult = 1ull << 20;
    } else if (suffix == "G" || suffix == "g" || suffix == "GiB") {
      mult = 1ull << 30;
    } else if (!suffix.empty()) {
      return false;
    }
    if (v > UINT64_MAX / mult) return false;
    out = v * mult;
    return true;
  }

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::string> options_;
};

// ---------------------------------------------------------------------------------------
// Sessions: one connection each, driven by the poll loop

enum class TxMode { none, pattern, echo, endless };

struct SessionSpec {
  TxMode tx = TxMode::none;
  uint64_t tx_bytes = 0;  // TxMode::pattern
  uint64_t tx_seed = 1;
  size_t chunk = 64 << 10;
  std::optional<uint64_t> verify_seed;      // received bytes must be this pattern
  std::optional<uint64_t> expect_rx_bytes;  // received count must be this at EOF
  bool expect_no_rx = false;                // any received byte is a failure
  uint64_t progress_at = 0;                 // print a progress line once this much arrived
  // hold: the end of the connection (EOF or an error) is the outcome, not a failure.
  bool end_is_outcome = false;
};

class Session {
 public:
  enum class State { pending, connecting, waiting, running, done };

  Session(int index, SessionSpec spec) : index_(index), spec_(spec), tx_pattern_(spec.tx_seed) {
    if (spec_.verify_seed) verifier_.emplace(*spec_.verify_seed);
    if (spec_.chunk == 0) spec_.chunk = 64 << 10;
  }

  int index() const { return index_; }
  State state() const { return state_; }
  bool done() const { return state_ == State::done; }
  bool failed() const { return failed_; }
  const std::string& failure() const { return failure_; }
  const vsock::Stream& stream() const { return stream_; }
  const Fnv1aStream& rx() const { return rx_; }
  const Fnv1aStream& tx() const { return tx_; }
  // How the connection ended (hold): "EOF" or an errno name; so_error as read at the end.
  const std::string& end_reason() const { return end_reason_; }
  const std::string& end_so_error() const { return end_so_error_; }
  // hold --write: the errno name of the write that failed, if one did.
  const std::string& write_error() const { return write_error_; }
  Clock::time_point connected_at() const { return connected_at_; }
  Clock::time_point ended_at() const { return ended_at_; }
  const std::string& peer() const { return peer_; }

  // Client side: start a non-blocking connect (libvsock's Connector). A Unix socket whose
  // backlog is full (EAGAIN) is retried until the deadline.
  void StartConnect(const vsock::Address& addr, milliseconds timeout) {
    addr_ = addr;
    timeout_ = timeout;
    deadline_ = Clock::now() + timeout;
    state_ = State::connecting;
    TryConnect();
  }

  // Server side: adopt an accepted stream.
  void Adopt(vsock::Stream s, bool run) {
    stream_ = std::move(s);
    std::error_code ec;
    stream_.set_nonblocking(true, ec);
    if (ec) return Finish("set_nonblocking: " + ec.message());
    peer_ = stream_.peer_address().to_string();
    connected_at_ = Clock::now();
    state_ = run ? State::running : State::waiting;
    Begin();
  }

  // The barrier lifted (or none): data may flow.
  void Run() {
    if (state_ == State::waiting) {
      state_ = State::running;
      Begin();
    }
  }

  int fd() const {
    if (state_ == State::connecting) return connector_.native_handle();
    if (state_ == State::waiting || state_ == State::running) return stream_.native_handle();
    return -1;
  }

  short events() const {
    if (state_ == State::connecting) return retry_at_ ? 0 : connector_.events();
    if (state_ == State::waiting) return POLLIN;
    if (state_ != State::running) return 0;
    short ev = 0;
    if (!rx_eof_ && !(spec_.tx == TxMode::echo && EchoFull())) ev |= POLLIN;
    if (WantsWrite()) ev |= POLLOUT;
    return ev;
  }

  // When the loop must wake up for this session (connect deadline or retry), if ever.
  std::optional<Clock::time_point> wake_at() const {
    if (state_ != State::connecting) return std::nullopt;
    if (retry_at_) return std::min(*retry_at_, deadline_);
    return deadline_;
  }

  // Returns true if anything moved (bytes, a connect step).
  bool OnReady(short revents) {
    if (state_ == State::connecting) {
      if (retry_at_) return false;
      std::error_code ec;
      connector_.step(ec);
      if (ec) {
        FinishConnectError(ec, connector_.reason());
        return true;
      }
      if (connector_.done()) Connected();
      return true;
    }
    if (state_ != State::waiting && state_ != State::running) return false;
    bool moved = false;
    if (revents & (POLLIN | POLLHUP | POLLERR)) moved |= ReadSome();
    if (state_ == State::running && (revents & (POLLOUT | POLLERR)) && WantsWrite()) {
      moved |= WriteSome();
    }
    MaybeComplete();
    return moved;
  }

  // Timers: connect deadline and EAGAIN retries.
  void OnTimer() {
    if (state_ != State::connecting) return;
    auto now = Clock::now();
    if (now >= deadline_) {
      std::error_code ec = retry_at_
                               ? std::make_error_code(std::errc::resource_unavailable_try_again)
                               : connector_.timeout_error();
      std::string why = retry_at_ ? "the Unix socket's backlog stayed full" : "no connection";
      return FinishConnectError(ec, "connect to '" + addr_.to_string() + "': " + why + " within " +
                                        std::to_string(timeout_.count()) + " ms");
    }
    if (retry_at_ && now >= *retry_at_) {
      retry_at_.reset();
      TryConnect();
    }
  }

  // The loop gave up on this session.
  void Abort(const std::string& why) {
    if (state_ != State::done) Finish(why);
  }

 private:
  void TryConnect() {
    std::error_code ec;
    connector_.start(addr_, ec, timeout_);
    if (ec == std::errc::resource_unavailable_try_again &&
        addr_.kind() != vsock::Address::Kind::vsock) {
      retry_at_ = Clock::now() + milliseconds(20);
      return;
    }
    if (ec) return FinishConnectError(ec, connector_.reason());
    if (connector_.done()) Connected();
  }

  void FinishConnectError(const std::error_code& ec, const std::string& why) {
    connect_errno_ = ErrnoOf(ec);
    Finish("connect failed: " + ErrnoName(connect_errno_) + " (" + why + ")");
  }

  void Connected() {
    stream_ = connector_.take_stream();
    peer_ = stream_.peer_address().to_string();
    connected_at_ = Clock::now();
    state_ = State::waiting;
  }

  void Begin() {
    if (spec_.tx == TxMode::echo) echo_.resize(256 << 10);
    if (spec_.tx == TxMode::pattern || spec_.tx == TxMode::endless) txbuf_.resize(spec_.chunk);
    if (spec_.tx == TxMode::pattern && spec_.tx_bytes == 0) MaybeShutdownWrite();
    MaybeComplete();
  }

  bool EchoFull() const { return echo_tail_ == echo_.size() && echo_head_ == 0; }

  bool WantsWrite() const {
    switch (spec_.tx) {
      case TxMode::none:
        return false;
      case TxMode::echo:
        return echo_tail_ > echo_head_ || (rx_eof_ && !shut_wr_);
      case TxMode::pattern:
        return !shut_wr_;
      case TxMode::endless:
        return !write_broken_;
    }
    return false;
  }

  // Reads what is there (bounded, to be fair to other sessions).
  bool ReadSome() {
    bool moved = false;
    size_t budget = 1 << 20;
    static uint8_t scratch[64 << 10];
    while (!rx_eof_ && budget > 0 && state_ != State::done) {
      uint8_t* buf = scratch;
      size_t room = sizeof scratch;
      if (spec_.tx == TxMode::echo) {
        if (echo_tail_ == echo_.size() && echo_head_ > 0) {
          std::memmove(echo_.data(), echo_.data() + echo_head_, echo_tail_ - echo_head_);
          echo_tail_ -= echo_head_;
          echo_head_ = 0;
        }
        room = echo_.size() - echo_tail_;
        if (room == 0) break;
        buf = echo_.data() + echo_tail_;
      }
      std::error_code ec;
      size_t n = stream_.read_some(buf, std::min(room, budget), ec);
      if (ec == std::errc::operation_would_block) break;
      if (ec) {
        ReadEnded(ec);
        return true;
      }
      moved = true;
      if (n == 0) {
        rx_eof_ = true;
        if (state_ == State::waiting) {
          Finish("the peer closed before any data was sent");
          return true;
        }
        if (spec_.end_is_outcome) {
          SetEnd("EOF");
          Finish("");
          return true;
        }
        if (spec_.expect_rx_bytes && rx_.count() != *spec_.expect_rx_bytes) {
          Finish("received " + std::to_string(rx_.count()) + " bytes, expected " +
                 std::to_string(*spec_.expect_rx_bytes));
          return true;
        }
        if (spec_.tx == TxMode::echo && echo_tail_ == echo_head_) MaybeShutdownWrite();
        break;
      }
      budget -= std::min(budget, n);
      std::span<const uint8_t> got(buf, n);
      rx_.Update(got);
      if (spec_.progress_at != 0 && !progress_said_ && rx_.count() >= spec_.progress_at) {
        progress_said_ = true;
        Out("progress received=" + std::to_string(rx_.count()) + " conn=" + std::to_string(index_));
      }
      if (spec_.tx == TxMode::echo) echo_tail_ += n;
      if (spec_.expect_no_rx) {
        Finish("received " + std::to_string(n) + " bytes, expected none");
        return true;
      }
      if (verifier_ && !verifier_->Check(got)) {
        char detail[128];
        std::snprintf(detail, sizeof detail, "byte %" PRIu64 " is 0x%02x, expected 0x%02x",
                      verifier_->mismatch_offset(), verifier_->mismatch_got(),
                      verifier_->mismatch_want());
        Finish(std::string("received data differs from the pattern: ") + detail);
        return true;
      }
      if (spec_.expect_rx_bytes && rx_.count() > *spec_.expect_rx_bytes) {
        Finish("received more than the expected " + std::to_string(*spec_.expect_rx_bytes) +
               " bytes");
        return true;
      }
    }
    return moved;
  }

  bool WriteSome() {
    bool moved = false;
    size_t budget = 1 << 20;
    while (budget > 0 && state_ != State::done && WantsWrite()) {
      const uint8_t* data = nullptr;
      size_t len = 0;
      if (spec_.tx == TxMode::echo) {
        if (echo_tail_ == echo_head_) {
          MaybeShutdownWrite();  // rx_eof_ and everything echoed
          return true;
        }
        data = echo_.data() + echo_head_;
        len = echo_tail_ - echo_head_;
      } else {
        if (tx_pos_ == tx_len_) {
          uint64_t left = spec_.tx == TxMode::endless ? UINT64_MAX : spec_.tx_bytes - tx_made_;
          if (left == 0) {
            MaybeShutdownWrite();
            return true;
          }
          tx_len_ = static_cast<size_t>(std::min<uint64_t>(left, txbuf_.size()));
          tx_pattern_.Fill({txbuf_.data(), tx_len_});
          tx_made_ += tx_len_;
          tx_pos_ = 0;
        }
        data = txbuf_.data() + tx_pos_;
        len = tx_len_ - tx_pos_;
      }
      std::error_code ec;
      size_t n = stream_.write_some(data, std::min(len, budget), ec);
      if (ec == std::errc::operation_would_block) break;
      if (ec) {
        WriteEnded(ec);
        return true;
      }
      moved = true;
      budget -= std::min(budget, n);
      tx_.Update({data, n});
      if (spec_.tx == TxMode::echo) {
        echo_head_ += n;
        if (echo_head_ == echo_tail_) echo_head_ = echo_tail_ = 0;
      } else {
        tx_pos_ += n;
      }
    }
    return moved;
  }

  void MaybeShutdownWrite() {
    if (shut_wr_) return;
    bool ready = spec_.tx == TxMode::echo ? (rx_eof_ && echo_tail_ == echo_head_)
                                          : (spec_.tx == TxMode::pattern &&
                                             tx_made_ == spec_.tx_bytes && tx_pos_ == tx_len_);
    if (!ready) return;
    std::error_code ec;
    stream_.shutdown(vsock::Shutdown::write, ec);
    if (ec) return WriteEnded(ec);
    shut_wr_ = true;
  }

  std::string SoError() const {
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(stream_.native_handle(), SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
      return ErrnoName(errno);
    }
    return ErrnoName(err);
  }

  void SetEnd(const std::string& reason) {
    end_reason_ = reason;
    end_so_error_ = SoError();
    ended_at_ = Clock::now();
  }

  void ReadEnded(const std::error_code& ec) {
    SetEnd(ErrnoName(ErrnoOf(ec)));
    if (spec_.end_is_outcome) return Finish("");
    Finish("read: " + end_reason_ + " (" + ec.message() + ") after " + std::to_string(rx_.count()) +
           " bytes received, so_error " + end_so_error_);
  }

  void WriteEnded(const std::error_code& ec) {
    if (spec_.end_is_outcome) {
      // hold --write: the write side broke; stop writing and let the read side tell how the
      // connection ended (EOF or an error), unless nothing more will come.
      write_broken_ = true;
      write_error_ = ErrnoName(ErrnoOf(ec));
      if (rx_eof_) {
        SetEnd(write_error_);
        Finish("");
      }
      return;
    }
    SetEnd(ErrnoName(ErrnoOf(ec)));
    Finish("write: " + end_reason_ + " (" + ec.message() + ") after " +
           std::to_string(tx_.count()) + " bytes sent, so_error " + end_so_error_);
  }

  void MaybeComplete() {
    if (state_ != State::running || !rx_eof_) return;
    if (spec_.tx == TxMode::none || shut_wr_) Finish("");
  }

  void Finish(const std::string& failure) {
    failed_ = !failure.empty();
    failure_ = failure;
    if (ended_at_ == Clock::time_point{}) ended_at_ = Clock::now();
    state_ = State::done;
    stream_.close();
    connector_ = vsock::Connector();
    // A server that runs forever keeps its finished sessions: drop their buffers.
    std::vector<uint8_t>().swap(echo_);
    std::vector<uint8_t>().swap(txbuf_);
  }

  int index_;
  SessionSpec spec_;
  State state_ = State::pending;
  vsock::Address addr_;
  milliseconds timeout_{0};
  Clock::time_point deadline_;
  std::optional<Clock::time_point> retry_at_;
  vsock::Connector connector_;
  vsock::Stream stream_;
  std::string peer_;
  int connect_errno_ = 0;
  Clock::time_point connected_at_, ended_at_;

  Fnv1aStream rx_, tx_;
  std::optional<PatternVerifier> verifier_;
  bool rx_eof_ = false;
  bool shut_wr_ = false;
  bool write_broken_ = false;
  std::string write_error_;

  PatternStream tx_pattern_;
  std::vector<uint8_t> txbuf_;
  size_t tx_pos_ = 0, tx_len_ = 0;
  uint64_t tx_made_ = 0;

  std::vector<uint8_t> echo_;
  size_t echo_head_ = 0, echo_tail_ = 0;

  bool failed_ = false;
  std::string failure_;
  std::string end_reason_, end_so_error_;
  bool progress_said_ = false;  // the --progress line is out
};

// ---------------------------------------------------------------------------------------
// The poll loop

class Loop {
 public:
  explicit Loop(milliseconds idle) : idle_(idle) {}

  void Add(Session* s) { sessions_.push_back(s); }
  // Called once per session when it is done (in completion order).
  std::function<void(Session&)> on_done;
  // Server side: accept connections from `listener` while accept_more() says so.
  vsock::Listener* listener = nullptr;
  std::function<bool()> accept_more;
  std::function<void(vsock::Stream)> on_accept;
  // Client side: connect pending sessions to `connect_to`, at most `parallel` at once;
  // with `barrier`, sessions only start their data once no connect is pending any more.
  std::optional<vsock::Address> connect_to;
  milliseconds connect_timeout{10000};
  size_t parallel = SIZE_MAX;
  bool barrier = false;

  // Runs until every session is done and nothing more will be accepted. Returns false if
  // the idle timeout fired (the remaining sessions are aborted).
  bool Run() {
    last_progress_ = Clock::now();
    std::vector<pollfd> fds;
    std::vector<Session*> owners;
    while (true) {
      StartConnects();
      ReapDone();
      bool accepting = listener != nullptr && accept_more && accept_more();
      if (!accepting && AllDone()) return true;

      fds.clear();
      owners.clear();
      if (accepting) {
        fds.push_back({listener->native_handle(), POLLIN, 0});
        owners.push_back(nullptr);
      }
      std::optional<Clock::time_point> wake;
      for (Session* s : sessions_) {
        if (s->done()) continue;
        if (auto w = s->wake_at()) wake = wake ? std::min(*wake, *w) : *w;
        int fd = s->fd();
        if (fd < 0) continue;
        fds.push_back({fd, s->events(), 0});
        owners.push_back(s);
      }
      auto now = Clock::now();
      std::optional<Clock::time_point> idle_at;
      if (idle_.count() > 0) idle_at = last_progress_ + idle_;
      if (idle_at) wake = wake ? std::min(*wake, *idle_at) : *idle_at;
      int timeout_ms = -1;
      if (wake) {
        auto left = std::chrono::ceil<milliseconds>(*wake - now).count();
        timeout_ms = static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
      }
      int r = ::poll(fds.data(), fds.size(), timeout_ms);
      if (r < 0 && errno != EINTR) {
        for (Session* s : sessions_) s->Abort(std::string("poll: ") + std::strerror(errno));
        ReapDone();
        return false;
      }
      for (size_t i = 0; r > 0 && i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        if (owners[i] == nullptr) {
          AcceptSome();
          continue;
        }
        if (owners[i]->OnReady(fds[i].revents)) last_progress_ = Clock::now();
      }
      for (Session* s : sessions_) {
        if (!s->done()) s->OnTimer();
      }
      if (idle_at && Clock::now() >= *idle_at && last_progress_ + idle_ <= Clock::now()) {
        for (Session* s : sessions_) {
          s->Abort("no progress for " + std::to_string(idle_.count()) + " ms (stalled)");
        }
        ReapDone();
        return false;
      }
    }
  }

 private:
  bool AllDone() const {
    for (Session* s : sessions_) {
      if (!s->done()) return false;
    }
    return true;
  }

  void StartConnects() {
    if (!connect_to) return;
    size_t connecting = 0, pending = 0;
    for (Session* s : sessions_) {
      if (s->state() == Session::State::connecting) ++connecting;
    }
    for (Session* s : sessions_) {
      if (s->state() == Session::State::pending && connecting < parallel) {
        s->StartConnect(*connect_to, connect_timeout);
        if (s->state() == Session::State::connecting) ++connecting;
      }
      if (s->state() == Session::State::pending) ++pending;
    }
    if (!barrier || (connecting == 0 && pending == 0)) {
      for (Session* s : sessions_) s->Run();
    }
  }

  void AcceptSome() {
    for (int i = 0; i < 64 && accept_more(); ++i) {
      std::error_code ec;
      vsock::Stream st = listener->accept(ec);
      if (ec == std::errc::operation_would_block) return;
      if (ec) {
        std::fprintf(stderr, "guestcheck: %s: accept: %s\n", g_command.c_str(),
                     ec.message().c_str());
        return;
      }
      last_progress_ = Clock::now();
      on_accept(std::move(st));
    }
  }

  // Reports finished sessions once and stops watching them.
  void ReapDone() {
    std::erase_if(sessions_, [this](Session* s) {
      if (!s->done()) return false;
      if (on_done) on_done(*s);
      return true;
    });
  }

  milliseconds idle_;
  Clock::time_point last_progress_;
  std::vector<Session*> sessions_;  // not finished or not reported yet
};

// ---------------------------------------------------------------------------------------
// Commands

struct Common {
  milliseconds timeout{10000};
  milliseconds idle{60000};
  uint64_t chunk = 64 << 10;
  uint64_t seed = 1;
};

const std::vector<OptionSpec> kCommonOptions = {{"timeout-ms", true}, {"idle-ms", true}};

std::vector<OptionSpec> With(std::vector<OptionSpec> extra) {
  extra.insert(extra.end(), kCommonOptions.begin(), kCommonOptions.end());
  return extra;
}

bool ParseCommon(const Args& a, Common& c, uint64_t default_seed, bool idle_default_never,
                 UsageError& err) {
  uint64_t v = 0;
  if (a.Has("timeout-ms")) {
    if (!a.Size("timeout-ms", v, err)) return false;
    c.timeout = milliseconds(static_cast<int64_t>(std::min<uint64_t>(v, 1ull << 40)));
  }
  c.idle = idle_default_never ? milliseconds(0) : milliseconds(60000);
  if (a.Has("idle-ms")) {
    if (!a.Size("idle-ms", v, err)) return false;
    c.idle = milliseconds(static_cast<int64_t>(std::min<uint64_t>(v, 1ull << 40)));
  }
  c.seed = default_seed;
  if (a.Has("seed") && !a.Size("seed", c.seed, err)) return false;
  if (a.Has("chunk")) {
    if (!a.Size("chunk", c.chunk, err)) return false;
    if (c.chunk == 0 || c.chunk > (64ull << 20)) {
      err.what = "--chunk must be 1..64M";
      return false;
    }
  }
  return true;
}

std::optional<vsock::Address> ParseAddress(const std::string& text, UsageError& err) {
  std::error_code ec;
  std::string why;
  auto addr = vsock::Address::parse(text, ec, &why);
  if (!addr) err.what = why;
  return addr;
}

// One address argument, required.
std::optional<vsock::Address> AddressArg(const Args& a, UsageError& err) {
  if (a.positional().empty()) {
    err.what = "missing ADDR";
    return std::nullopt;
  }
  return ParseAddress(a.positional()[0], err);
}

// Connects one client session to `addr` and runs it to its end (send, recv); returns the
// milliseconds that took.
int64_t RunClient(Session& s, const Common& c, const vsock::Address& addr) {
  Loop loop(c.idle);
  loop.connect_to = addr;
  loop.connect_timeout = c.timeout;
  loop.Add(&s);
  auto start = Clock::now();
  loop.Run();
  return MsSince(start);
}

int CmdSend(const Args& a, UsageError& err) {
  Common c;
  if (!ParseCommon(a, c, 1, false, err)) return 2;
  auto addr = AddressArg(a, err);
  if (!addr) return 2;
  uint64_t bytes = 0;
  if (!a.Has("bytes")) {
    err.what = "--bytes N is required";
    return 2;
  }
  if (!a.Size("bytes", bytes, err)) return 2;
  std::string expect = a.Text("expect").value_or("any");
  if (expect != "echo" && expect != "none" && expect != "any") {
    err.what = "--expect must be echo, none or any";
    return 2;
  }
  SessionSpec spec;
  spec.tx = TxMode::pattern;
  spec.tx_bytes = bytes;
  spec.tx_seed = c.seed;
  spec.chunk = c.chunk;
  if (expect == "echo") {
    spec.verify_seed = c.seed;
    spec.expect_rx_bytes = bytes;
  }
  spec.expect_no_rx = expect == "none";
  Session s(0, spec);
  int64_t ms = RunClient(s, c, *addr);
  if (s.failed()) return Fail(s.failure());
  Out("ok sent=" + std::to_string(s.tx().count()) + " sent_fnv=" + Hex(s.tx().hash()) +
      " received=" + std::to_string(s.rx().count()) + " received_fnv=" + Hex(s.rx().hash()) +
      " ms=" + std::to_string(ms));
  return 0;
}

int CmdEchoMany(const Args& a, UsageError& err) {
  Common c;
  if (!ParseCommon(a, c, 1000, false, err)) return 2;
  auto addr = AddressArg(a, err);
  if (!addr) return 2;
  uint64_t conns = 0, bytes = 0, parallel = 32;
  if (!a.Has("conns") || !a.Has("bytes")) {
    err.what = "--conns C and --bytes N are required";
    return 2;
  }
  if (!a.Size("conns", conns, err) || !a.Size("bytes", bytes, err) ||
      !a.Size("connect-parallel", parallel, err)) {
    return 2;
  }
  if (conns == 0 || conns > 100000) {
    err.what = "--conns must be 1..100000";
    return 2;
  }
  if (parallel == 0) {
    err.what = "--connect-parallel must be at least 1";
    return 2;
  }
  std::vector<std::unique_ptr<Session>> sessions;
  Loop loop(c.idle);
  loop.connect_to = *addr;
  loop.connect_timeout = c.timeout;
  loop.parallel = parallel;
  loop.barrier = !a.Has("no-barrier");
  for (uint64_t i = 0; i < conns; ++i) {
    SessionSpec spec;
    spec.tx = TxMode::pattern;
    spec.tx_bytes = bytes;
    spec.tx_seed = c.seed + i;
    spec.chunk = c.chunk;
    spec.verify_seed = c.seed + i;
    spec.expect_rx_bytes = bytes;
    sessions.push_back(std::make_unique<Session>(static_cast<int>(i), spec));
    loop.Add(sessions.back().get());
  }
  size_t failed = 0;
  loop.on_done = [&](Session& s) {
    if (!s.failed()) return;
    ++failed;
    std::fprintf(stderr, "guestcheck: echo-many: conn %d (seed %" PRIu64 "): %s\n", s.index(),
                 c.seed + static_cast<uint64_t>(s.index()), s.failure().c_str());
  };
  auto start = Clock::now();
  loop.Run();
  if (failed > 0) {
    return Fail(std::to_string(failed) + " of " + std::to_string(conns) + " connections failed");
  }
  Out("ok conns=" + std::to_string(conns) + " bytes=" + std::to_string(bytes) +
      " ms=" + std::to_string(MsSince(start)));
  return 0;
}

int CmdServe(const Args& a, UsageError& err) {
  Common c;
  if (!ParseCommon(a, c, 1, true, err)) return 2;
  if (!a.positional().empty()) {
    err.what = "serve takes no ADDR (use --port P or --listen ADDR)";
    return 2;
  }
  std::optional<vsock::Address> addr;
  if (a.Has("listen")) {
    if (a.Has("port") || a.Has("cid")) {
      err.what = "--listen excludes --port and --cid";
      return 2;
    }
    addr = ParseAddress(*a.Text("listen"), err);
    if (!addr) return 2;
  } else if (a.Has("port")) {
    std::string cid = a.Text("cid").value_or("any");
    addr = ParseAddress("vsock://" + cid + ":" + *a.Text("port"), err);
    if (!addr) return 2;
  } else {
    err.what = "serve needs --port P or --listen ADDR";
    return 2;
  }
  std::string mode = a.Text("mode").value_or("");
  if (mode != "echo" && mode != "sink" && mode != "source" && mode != "hold") {
    err.what = "--mode must be echo, sink, source or hold";
    return 2;
  }
  uint64_t count = 1, bytes = 0, progress = 0;
  if (!a.Size("count", count, err) || !a.Size("bytes", bytes, err) ||
      !a.Size("progress", progress, err)) {
    return 2;
  }
  if (mode == "source" && !a.Has("bytes")) {
    err.what = "--mode source needs --bytes N";
    return 2;
  }
  if (a.Has("verify") && mode != "sink") {
    err.what = "--verify is for --mode sink";
    return 2;
  }
  SessionSpec spec;
  spec.chunk = c.chunk;
  spec.progress_at = progress;
  if (mode == "echo") {
    spec.tx = TxMode::echo;
  } else if (mode == "source") {
    spec.tx = TxMode::pattern;
    spec.tx_bytes = bytes;
    spec.tx_seed = c.seed;
  } else if (mode == "sink") {
    if (a.Has("bytes")) spec.expect_rx_bytes = bytes;
    if (a.Has("verify")) spec.verify_seed = c.seed;
  } else {
    spec.end_is_outcome = true;
  }

  std::error_code ec;
  vsock::Listener listener = vsock::listen(*addr, ec);
  if (ec) return Fail("listen on '" + addr->to_string() + "': " + ec.message());
  listener.set_nonblocking(true, ec);
  if (ec) return Fail("listen: set_nonblocking: " + ec.message());
  Out("listening " + listener.local_address().to_string());

  std::vector<std::unique_ptr<Session>> sessions;
  Loop loop(c.idle);
  uint64_t accepted = 0, finished = 0, failed = 0, rx_total = 0, tx_total = 0;
  loop.listener = &listener;
  loop.accept_more = [&] { return count == 0 || accepted < count; };
  loop.on_accept = [&](vsock::Stream st) {
    sessions.push_back(std::make_unique<Session>(static_cast<int>(accepted++), spec));
    loop.Add(sessions.back().get());
    sessions.back()->Adopt(std::move(st), true);
  };
  loop.on_done = [&](Session& s) {
    ++finished;
    rx_total += s.rx().count();
    tx_total += s.tx().count();
    std::string tail = " conn=" + std::to_string(s.index()) + " peer=" + s.peer();
    if (s.failed()) {
      ++failed;
      std::fprintf(stderr, "guestcheck: serve: conn %d (peer %s): %s\n", s.index(),
                   s.peer().c_str(), s.failure().c_str());
      return;
    }
    if (mode == "echo") {
      Out("echoed bytes=" + std::to_string(s.tx().count()) + tail);
    } else if (mode == "sink") {
      Out("received bytes=" + std::to_string(s.rx().count()) + " fnv=" + Hex(s.rx().hash()) + tail);
    } else if (mode == "source") {
      Out("sent bytes=" + std::to_string(s.tx().count()) + " fnv=" + Hex(s.tx().hash()) + tail);
    } else {
      Out("closed reason=" + s.end_reason() + " so_error=" + s.end_so_error() +
          " received=" + std::to_string(s.rx().count()) + tail);
    }
  };
  bool ran = loop.Run();
  (void)ran;
  if (failed > 0) {
    return Fail(std::to_string(failed) + " of " + std::to_string(finished) + " connections failed");
  }
  Out("ok conns=" + std::to_string(finished) + " received=" + std::to_string(rx_total) +
      " sent=" + std::to_string(tx_total));
  return 0;
}

int CmdRecv(const Args& a, UsageError& err) {
  Common c;
  if (!ParseCommon(a, c, 1, false, err)) return 2;
  auto addr = AddressArg(a, err);
  if (!addr) return 2;
  SessionSpec spec;
  uint64_t bytes = 0;
  if (!a.Size("bytes", bytes, err)) return 2;
  if (a.Has("bytes")) spec.expect_rx_bytes = bytes;
  if (a.Has("verify")) spec.verify_seed = c.seed;
  Session s(0, spec);
  int64_t ms = RunClient(s, c, *addr);
  if (s.failed()) return Fail(s.failure());
  Out("ok bytes=" + std::to_string(s.rx().count()) + " fnv=" + Hex(s.rx().hash()) +
      " ms=" + std::to_string(ms));
  return 0;
}

int CmdExpectRefused(const Args& a, UsageError& err) {
  Common c;
  if (!ParseCommon(a, c, 1, false, err)) return 2;
  auto addr = AddressArg(a, err);
  if (!addr) return 2;
  uint64_t max_ms = 0;
  if (!a.Size("max-ms", max_ms, err)) return 2;
  std::optional<std::string> want = a.Text("errno");
  if (want && (want->size() < 2 || (*want)[0] != 'E')) {
    err.what = "--errno takes an errno name such as ECONNREFUSED";
    return 2;
  }
  std::error_code ec;
  std::string why;
  auto start = Clock::now();
  vsock::Stream s = vsock::connect(*addr, c.timeout, ec, &why);
  int64_t ms = MsSince(start);
  if (!ec) {
    return Fail("connected to '" + addr->to_string() + "' (peer " + s.peer_address().to_string() +
                ") in " + std::to_string(ms) + " ms; expected the connect to fail");
  }
  std::string name = ErrnoName(ErrnoOf(ec));
  if (want) {
    bool match =
        *want == name || (*want == "ECONNRESET" && addr->is_vsock() && name == "ECONNREFUSED");
    if (!match) {
      return Fail("connect failed with " + name + ", expected " + *want + " (" + why + ")");
    }
  }
  if (a.Has("max-ms") && static_cast<uint64_t>(ms) > max_ms) {
    return Fail("connect failed with " + name + " after " + std::to_string(ms) +
                " ms, expected within " + std::to_string(max_ms) + " ms");
  }
  Out("ok refused errno=" + name + " ms=" + std::to_string(ms) + " why=" + Quote(why));
  return 0;
}

int CmdHold(const Args& a, UsageError& err) {
  Common c;
  if (!ParseCommon(a, c, 1, true, err)) return 2;
  auto addr = AddressArg(a, err);
  if (!addr) return 2;
  std::optional<std::string> expect = a.Text("expect");
  if (expect && *expect != "EOF" && *expect != "error" && *expect != "any" &&
      (expect->size() < 2 || (*expect)[0] != 'E')) {
    err.what = "--expect takes EOF, an errno name, error or any";
    return 2;
  }
  SessionSpec spec;
  spec.end_is_outcome = true;
  spec.chunk = c.chunk;
  if (a.Has("write")) {
    spec.tx = TxMode::endless;
    spec.tx_seed = c.seed;
  }
  // Connect first (blocking, with the timeout), report, then hold in the loop.
  std::error_code ec;
  std::string why;
  vsock::Stream st = vsock::connect(*addr, c.timeout, ec, &why);
  if (ec) return Fail("connect failed: " + ErrnoName(ErrnoOf(ec)) + " (" + why + ")");
  Out("connected local=" + st.local_address().to_string() +
      " peer=" + st.peer_address().to_string());
  Session s(0, spec);
  s.Adopt(std::move(st), true);
  Loop loop(c.idle);
  loop.Add(&s);
  loop.Run();
  if (s.failed()) return Fail(s.failure());  // the idle timeout or a local error
  int64_t ms = std::chrono::duration_cast<milliseconds>(s.ended_at() - s.connected_at()).count();
  const std::string& reason = s.end_reason();
  Out("closed reason=" + reason + " so_error=" + s.end_so_error() +
      " received=" + std::to_string(s.rx().count()) + " sent=" + std::to_string(s.tx().count()) +
      (s.write_error().empty() ? "" : " write_error=" + s.write_error()) +
      " ms=" + std::to_string(ms));
  if (expect) {
    bool match = *expect == "any" || *expect == reason || (*expect == "error" && reason != "EOF") ||
                 (*expect != "EOF" && (*expect == s.end_so_error() || *expect == s.write_error()));
    if (match) return 0;
    return Fail("the connection ended with " + reason + " (so_error " + s.end_so_error() +
                "), expected " + *expect);
  }
  return Fail("the connection broke: " + reason + " (so_error " + s.end_so_error() + ")");
}

struct Command {
  const char* name;
  std::vector<OptionSpec> options;
  size_t positional;
  int (*run)(const Args&, UsageError&);
};

int RealMain(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::vector<Command> commands = {
      {"send", With({{"bytes", true}, {"seed", true}, {"chunk", true}, {"expect", true}}), 1,
       CmdSend},
      {"echo-many",
       With({{"conns", true},
             {"bytes", true},
             {"seed", true},
             {"chunk", true},
             {"connect-parallel", true},
             {"no-barrier", false}}),
       1, CmdEchoMany},
      {"serve",
       With({{"port", true},
             {"cid", true},
             {"listen", true},
             {"mode", true},
             {"bytes", true},
             {"seed", true},
             {"chunk", true},
             {"count", true},
             {"progress", true},
             {"verify", false}}),
       0, CmdServe},
      {"recv", With({{"bytes", true}, {"seed", true}, {"verify", false}}), 1, CmdRecv},
      {"expect-refused", With({{"errno", true}, {"max-ms", true}}), 1, CmdExpectRefused},
      {"hold", With({{"write", false}, {"chunk", true}, {"seed", true}, {"expect", true}}), 1,
       CmdHold},
  };
  if (argc < 2) {
    std::fputs(kHelp, stderr);
    return 2;
  }
  std::string_view first = argv[1];
  if (first == "--help" || first == "-h" || first == "help") {
    std::fputs(kHelp, stdout);
    return 0;
  }
  for (int i = 2; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--help" || std::string_view(argv[i]) == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
  }
  for (const Command& cmd : commands) {
    if (first != cmd.name) continue;
    g_command = cmd.name;
    UsageError err;
    auto args = Args::Parse(argc, argv, 2, cmd.options, cmd.positional, err);
    int rc = args ? cmd.run(*args, err) : 2;
    if (rc == 2) {
      std::fprintf(stderr, "guestcheck %s: %s (see guestcheck --help)\n", cmd.name,
                   err.what.c_str());
    }
    return rc;
  }
  std::fprintf(stderr, "guestcheck: unknown command '%s' (see guestcheck --help)\n", argv[1]);
  return 2;
}

}  // namespace
}  // namespace vsockd::guestcheck

int main(int argc, char** argv) {
  return vsockd::RunMain("guestcheck", vsockd::guestcheck::RealMain, argc, argv);
}
