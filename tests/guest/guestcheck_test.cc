// guestcheck (the in-guest traffic checker of the VM tests) on the host, against the real
// vsockd and a virtual guest (vguest, in-process): every subcommand over vsockd's hybrid
// sockets (hvsock://, and the hybrid listener for serve), plus plain Unix sockets where no
// guest is needed. Never AF_VSOCK: guestcheck is only ever given hybrid or unix addresses
// here. The guest side checks what guestcheck sent with the shared pattern, and guestcheck's
// reported checksums are compared with the ones computed here.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <string_view>
#include <thread>

#include "tests/common/pattern.h"
#include "tests/integration/guest_util.h"
#include "tests/integration/harness.h"
#include "vguest/guest.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;

std::string Guestcheck() { return BuiltBinary("tests/guest/guestcheck"); }

std::string Hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// The value of `key=` on the first line starting with `prefix` ("" if absent).
std::string Field(const std::string& output, const std::string& prefix, const std::string& key) {
  size_t pos = 0;
  while (pos < output.size()) {
    size_t eol = output.find('\n', pos);
    if (eol == std::string::npos) eol = output.size();
    std::string line = output.substr(pos, eol - pos);
    pos = eol + 1;
    if (!line.starts_with(prefix)) continue;
    // Appended, not " " + line.substr(...): g++ 12 at -O3 warns (-Wrestrict) on that
    // operator+ inlined, a false positive (GCC bug 105329).
    std::string words = " ";
    words += std::string_view(line).substr(prefix.size());
    size_t at = words.find(" " + key + "=");
    if (at == std::string::npos) continue;
    size_t from = at + key.size() + 2;
    return words.substr(from, words.find(' ', from) - from);
  }
  return "";
}

uint64_t PatternFnv(size_t len, uint64_t seed) { return Fnv1a(PatternBytes(len, seed)); }

// Runs a guestcheck command line on a thread (it may block until the guest acts).
class Background {
 public:
  explicit Background(std::string cmd)
      : thread_([this, cmd = std::move(cmd)] { result_ = RunCommand(cmd); }) {}
  ~Background() { Join(); }
  const RunResult& Join() {
    if (thread_.joinable()) thread_.join();
    return result_;
  }

 private:
  RunResult result_;
  std::thread thread_;
};

// vsockd plus a virtual guest with services: 5000 echo, 5001 source (kSourceBytes of
// pattern seed 7, then EOF), 5002 hold (accepts and keeps the stream), 5003 sink (counts
// and hashes, shuts down its own side at once).
class GuestcheckTest : public ::testing::Test {
 protected:
  static constexpr size_t kSourceBytes = 3 << 20;

  void SetUp() override {
    ASSERT_TRUE(daemon_.Start().ok()) << daemon_.Log();
    vguest::GuestOptions options;
    options.socket_path = daemon_.socket_path();
    auto guest = loop_.Call([&] { return vguest::Guest::Attach(loop_.loop(), options); });
    ASSERT_TRUE(guest.ok()) << guest.error().ToString() << "\n" << daemon_.Log();
    guest_ = std::move(*guest);
    auto st = loop_.Call([&]() -> Status {
      VSOCKD_RETURN_IF_ERROR(guest_->Listen(
          5000, [this](vguest::Stream* s) { echoes_.push_back(std::make_unique<StreamEcho>(s)); }));
      VSOCKD_RETURN_IF_ERROR(guest_->Listen(5001, [this](vguest::Stream* s) {
        drivers_.push_back(std::make_unique<StreamDriver>(s, std::make_shared<StreamObserver>(),
                                                          PatternBytes(kSourceBytes, 7)));
        drivers_.back()->Start();
      }));
      VSOCKD_RETURN_IF_ERROR(guest_->Listen(5002, [this](vguest::Stream* s) {
        held_ = s;
        s->on_data = [this](std::span<const uint8_t> d) { held_received_ += d.size(); };
        s->on_closed = [this](const Status&) { held_ = nullptr; };
        held_accepted_ = true;
      }));
      return guest_->Listen(5003, [this](vguest::Stream* s) {
        drivers_.push_back(std::make_unique<StreamDriver>(s, sink_obs_));
        drivers_.back()->Start();  // no data: shuts down our side at once
      });
    });
    ASSERT_TRUE(st.ok()) << st.error().ToString();
  }

  void TearDown() override {
    loop_.Call([&] {
      echoes_.clear();
      drivers_.clear();
      guest_.reset();
      return 0;
    });
  }

  std::string Hybrid(uint32_t port) const {
    return "hvsock://" + daemon_.uds_path() + ":" + std::to_string(port);
  }

  // A guest -> host connection to host port `port`, driven by a StreamDriver sending `out`.
  // The listener's socket file appears at bind(), a moment before listen(): a refused
  // connect is retried.
  std::shared_ptr<StreamObserver> GuestConnect(uint32_t port, const std::vector<uint8_t>& out,
                                               bool close_at_once = false) {
    auto obs = std::make_shared<StreamObserver>();
    for (int attempt = 0; attempt < 500; ++attempt) {
      auto outcome = std::make_shared<std::atomic<int>>(0);  // 1 connected, 2 failed
      loop_.Call([&] {
        guest_->Connect(
            port, [this, obs, out, close_at_once, outcome](vguest::Stream* s, const Status& st) {
              if (!st.ok()) {
                *outcome = 2;
                return;
              }
              *outcome = 1;
              if (close_at_once) {
                s->Close();
                return;
              }
              drivers_.push_back(std::make_unique<StreamDriver>(s, obs, out));
              drivers_.back()->Start();
            });
        return 0;
      });
      EXPECT_TRUE(WaitFor([&] { return outcome->load() != 0; }));
      if (outcome->load() == 1) return obs;
      std::this_thread::sleep_for(10ms);
    }
    ADD_FAILURE() << "guest -> host port " << port << ": every connect was refused";
    return obs;
  }

  // Starts `guestcheck serve --listen hvsock://UDS:port ARGS` and waits for its listener.
  std::unique_ptr<Background> Serve(uint32_t port, const std::string& args) {
    auto bg =
        std::make_unique<Background>(Guestcheck() + " serve --listen " + Hybrid(port) + " " + args);
    EXPECT_TRUE(WaitFor([&] {
      return UnixListening(daemon_.uds_path() + "_" + std::to_string(port));
    })) << "guestcheck serve did not listen";
    return bg;
  }

  TempDir dir_;
  Daemon daemon_{dir_, 3};
  LoopThread loop_;
  std::unique_ptr<vguest::Guest> guest_;
  // Loop thread only:
  std::vector<std::unique_ptr<StreamEcho>> echoes_;
  std::vector<std::unique_ptr<StreamDriver>> drivers_;
  vguest::Stream* held_ = nullptr;
  std::shared_ptr<StreamObserver> sink_obs_ = std::make_shared<StreamObserver>();
  // Any thread:
  std::atomic<bool> held_accepted_{false};
  std::atomic<uint64_t> held_received_{0};
};

TEST_F(GuestcheckTest, SendToEchoChecksEveryByte) {
  const size_t n = 8 << 20;
  auto r =
      RunCommand(Guestcheck() + " send " + Hybrid(5000) + " --bytes 8M --seed 3 --expect echo");
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_.Log();
  EXPECT_EQ(Field(r.output, "ok", "sent"), std::to_string(n)) << r.output;
  EXPECT_EQ(Field(r.output, "ok", "received"), std::to_string(n)) << r.output;
  // The program's pattern is the tests' pattern.
  EXPECT_EQ(Field(r.output, "ok", "sent_fnv"), Hex(PatternFnv(n, 3))) << r.output;
  EXPECT_EQ(Field(r.output, "ok", "received_fnv"), Hex(PatternFnv(n, 3))) << r.output;
}

TEST_F(GuestcheckTest, SendToSinkReportsNothingBack) {
  const size_t n = 1 << 20;
  auto r = RunCommand(Guestcheck() + " send " + Hybrid(5003) +
                      " --bytes 1M --seed 9 --chunk 1000 --expect none");
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_.Log();
  EXPECT_EQ(Field(r.output, "ok", "received"), "0") << r.output;
  ASSERT_TRUE(WaitFor([&] { return sink_obs_->eof.load(); }));
  EXPECT_EQ(sink_obs_->received.load(), n);
  EXPECT_EQ(sink_obs_->hash.load(), PatternFnv(n, 9));
}

TEST_F(GuestcheckTest, SendExpectingEchoFailsAgainstASource) {
  // The source sends its own data (seed 7): neither the count nor the bytes are an echo.
  auto r = RunCommand(Guestcheck() + " send " + Hybrid(5001) + " --bytes 1000 --expect echo");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("guestcheck: send: "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("\nok "), std::string::npos) << r.output;
}

TEST_F(GuestcheckTest, EchoManyTwoHundredConnections) {
  auto r = RunCommand(Guestcheck() + " echo-many " + Hybrid(5000) + " --conns 200 --bytes 64K");
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_.Log();
  EXPECT_EQ(Field(r.output, "ok", "conns"), "200") << r.output;
  EXPECT_EQ(Field(r.output, "ok", "bytes"), "65536") << r.output;
  // The guest accepted 200 echo streams.
  EXPECT_EQ(loop_.Call([&] { return echoes_.size(); }), 200u);
}

TEST_F(GuestcheckTest, EchoManyReportsEachFailedConnection) {
  // Port 5001 is a source, not an echo: every connection must fail, each reported.
  auto r = RunCommand(Guestcheck() + " echo-many " + Hybrid(5001) +
                      " --conns 3 --bytes 100 --no-barrier");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  for (int i = 0; i < 3; ++i) {
    EXPECT_NE(r.output.find("conn " + std::to_string(i) + " "), std::string::npos) << r.output;
  }
  EXPECT_NE(r.output.find("3 of 3 connections failed"), std::string::npos) << r.output;
}

TEST_F(GuestcheckTest, EchoManyRefusedConnectsFail) {
  auto r = RunCommand(Guestcheck() + " echo-many " + Hybrid(4444) + " --conns 5 --bytes 10");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("ECONNREFUSED"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("5 of 5 connections failed"), std::string::npos) << r.output;
}

TEST_F(GuestcheckTest, RecvVerifiesAHostSource) {
  auto r = RunCommand(Guestcheck() + " recv " + Hybrid(5001) + " --bytes 3M --seed 7 --verify");
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_.Log();
  EXPECT_EQ(Field(r.output, "ok", "bytes"), std::to_string(kSourceBytes)) << r.output;
  EXPECT_EQ(Field(r.output, "ok", "fnv"), Hex(PatternFnv(kSourceBytes, 7))) << r.output;
}

TEST_F(GuestcheckTest, RecvDetectsWrongDataAndWrongCount) {
  auto wrong_seed = RunCommand(Guestcheck() + " recv " + Hybrid(5001) + " --seed 8 --verify");
  EXPECT_EQ(wrong_seed.exit_code, 1) << wrong_seed.output;
  EXPECT_NE(wrong_seed.output.find("differs from the pattern: byte 0"), std::string::npos)
      << wrong_seed.output;
  auto wrong_count = RunCommand(Guestcheck() + " recv " + Hybrid(5001) + " --bytes 2M");
  EXPECT_EQ(wrong_count.exit_code, 1) << wrong_count.output;
  EXPECT_NE(wrong_count.output.find("received more than the expected 2097152 bytes"),
            std::string::npos)
      << wrong_count.output;
  auto too_few = RunCommand(Guestcheck() + " recv " + Hybrid(5001) + " --bytes 4M");
  EXPECT_EQ(too_few.exit_code, 1) << too_few.output;
  EXPECT_NE(too_few.output.find("received 3145728 bytes, expected 4194304"), std::string::npos)
      << too_few.output;
}

TEST_F(GuestcheckTest, ExpectRefused) {
  auto r = RunCommand(Guestcheck() + " expect-refused " + Hybrid(1234) + " --errno ECONNREFUSED");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Field(r.output, "ok refused", "errno"), "ECONNREFUSED") << r.output;
  EXPECT_NE(Field(r.output, "ok refused", "ms"), "") << r.output;
  // Any failure, no errno asked for.
  EXPECT_EQ(RunCommand(Guestcheck() + " expect-refused " + Hybrid(1234)).exit_code, 0);
  // The wrong errno fails the check.
  auto other = RunCommand(Guestcheck() + " expect-refused " + Hybrid(1234) + " --errno ETIMEDOUT");
  EXPECT_EQ(other.exit_code, 1) << other.output;
  EXPECT_NE(other.output.find("failed with ECONNREFUSED, expected ETIMEDOUT"), std::string::npos)
      << other.output;
  // The ECONNRESET alias is only for vsock addresses (the kernel's answer).
  EXPECT_EQ(RunCommand(Guestcheck() + " expect-refused " + Hybrid(1234) + " --errno ECONNRESET")
                .exit_code,
            1);
  // A connect that works fails the check.
  auto ok = RunCommand(Guestcheck() + " expect-refused " + Hybrid(5000));
  EXPECT_EQ(ok.exit_code, 1) << ok.output;
  EXPECT_NE(ok.output.find("expected the connect to fail"), std::string::npos) << ok.output;
  // A missing hybrid socket is a system error with its own name.
  auto missing = RunCommand(Guestcheck() + " expect-refused hvsock://" + dir_.File("nope") +
                            ":5000 --errno ENOENT");
  EXPECT_EQ(missing.exit_code, 0) << missing.output;
}

TEST_F(GuestcheckTest, HoldReportsTheGuestClosing) {
  Background bg(Guestcheck() + " hold " + Hybrid(5002) + " --expect EOF");
  ASSERT_TRUE(WaitFor([&] { return held_accepted_.load(); }, 20s));
  loop_.Call([&] {
    const uint8_t hello[] = {'h', 'i'};
    if (held_ != nullptr) {
      held_->Write(hello, sizeof hello);
      held_->Close();
      held_ = nullptr;
    }
    return 0;
  });
  const RunResult& r = bg.Join();
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("connected local="), std::string::npos) << r.output;
  EXPECT_EQ(Field(r.output, "closed", "reason"), "EOF") << r.output;
  EXPECT_EQ(Field(r.output, "closed", "received"), "2") << r.output;
}

TEST_F(GuestcheckTest, HoldFailsWhenTheGuestGoesAway) {
  Background bg(Guestcheck() + " hold " + Hybrid(5002) + " --write --chunk 4K");
  ASSERT_TRUE(WaitFor([&] { return held_accepted_.load(); }, 20s));
  // Data flows from the holder while it holds.
  ASSERT_TRUE(WaitFor([&] { return held_received_.load() >= 64 * 1024; }, 20s));
  loop_.Call([&] {  // the guest vanishes: vsockd ends its connections
    held_ = nullptr;
    drivers_.clear();
    echoes_.clear();
    guest_.reset();
    return 0;
  });
  const RunResult& r = bg.Join();
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(Field(r.output, "closed", "reason"), "") << r.output;
  EXPECT_NE(r.output.find("guestcheck: hold: the connection broke"), std::string::npos) << r.output;
}

TEST_F(GuestcheckTest, ServeSinkVerifiesWhatTheGuestSends) {
  const size_t n = 2 << 20;
  auto bg = Serve(6000, "--mode sink --bytes 2M --seed 5 --verify --progress 1M");
  auto obs = GuestConnect(6000, PatternBytes(n, 5));
  const RunResult& r = bg->Join();
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_.Log();
  // One progress line, when the first MiB was in.
  const uint64_t progress =
      std::strtoull(Field(r.output, "progress", "received").c_str(), nullptr, 10);
  EXPECT_GE(progress, 1u << 20) << r.output;
  EXPECT_LT(progress, n) << r.output;
  EXPECT_EQ(r.output.find("progress"), r.output.rfind("progress")) << r.output;
  EXPECT_EQ(Field(r.output, "received", "bytes"), std::to_string(n)) << r.output;
  EXPECT_EQ(Field(r.output, "received", "fnv"), Hex(PatternFnv(n, 5))) << r.output;
  // vsockd names the caller: the guest's CID shows as the peer.
  EXPECT_NE(Field(r.output, "received", "peer").find("vsock://3:"), std::string::npos) << r.output;
  EXPECT_EQ(Field(r.output, "ok", "conns"), "1") << r.output;
}

TEST_F(GuestcheckTest, ServeSinkRejectsTheWrongData) {
  auto bg = Serve(6001, "--mode sink --seed 5 --verify");
  auto obs = GuestConnect(6001, PatternBytes(1000, 6));
  const RunResult& r = bg->Join();
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("differs from the pattern"), std::string::npos) << r.output;
}

TEST_F(GuestcheckTest, ServeSourceAndEchoManyConnections) {
  const size_t n = 512 << 10;
  auto bg = Serve(6002, "--mode source --bytes 512K --seed 11 --count 3");
  std::vector<std::shared_ptr<StreamObserver>> obs;
  obs.reserve(3);
  for (int i = 0; i < 3; ++i) obs.push_back(GuestConnect(6002, {}));
  const RunResult& r = bg->Join();
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_.Log();
  EXPECT_EQ(Field(r.output, "ok", "conns"), "3") << r.output;
  EXPECT_EQ(Field(r.output, "ok", "sent"), std::to_string(3 * n)) << r.output;
  for (auto& o : obs) {
    ASSERT_TRUE(WaitFor([&] { return o->eof.load(); }));
    EXPECT_EQ(o->received.load(), n);
    EXPECT_EQ(o->hash.load(), PatternFnv(n, 11));
  }

  auto echo = Serve(6003, "--mode echo --count 2");
  auto a = GuestConnect(6003, PatternBytes(300000, 1));
  auto b = GuestConnect(6003, PatternBytes(5, 2));
  const RunResult& e = echo->Join();
  ASSERT_EQ(e.exit_code, 0) << e.output << daemon_.Log();
  ASSERT_TRUE(WaitFor([&] { return a->eof.load() && b->eof.load(); }));
  EXPECT_EQ(a->hash.load(), PatternFnv(300000, 1));
  EXPECT_EQ(b->hash.load(), PatternFnv(5, 2));
  EXPECT_EQ(Field(e.output, "ok", "received"), "300005") << e.output;
}

TEST_F(GuestcheckTest, ServeHoldReportsTheEnd) {
  auto bg = Serve(6004, "--mode hold");
  auto obs = GuestConnect(6004, {}, /*close_at_once=*/true);
  const RunResult& r = bg->Join();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Field(r.output, "closed", "reason"), "EOF") << r.output;
}

TEST(GuestcheckCliTest, UsageErrorsExitTwo) {
  const std::string g = Guestcheck();
  for (const std::string args :
       {"", "frob", "send", "send unix:/nonexistent", "send unix:/x --bytes 12Q",
        "send unix:/x --bytes 1 --expect maybe", "send unix:/x --bytes",
        "send unix:/x --bytes 1 --bogus", "send unix:/x unix:/y --bytes 1",
        "send not-an-address --bytes 1", "echo-many unix:/x --conns 0 --bytes 1",
        "serve --listen unix:/x --mode bogus", "serve --mode echo",
        "serve --listen unix:/x --mode source", "recv", "expect-refused unix:/x --errno nope",
        "hold unix:/x --expect maybe"}) {
    std::string cmd = g + " ";
    cmd += args;
    auto r = RunCommand(cmd);
    EXPECT_EQ(r.exit_code, 2) << args << ": " << r.output;
  }
  auto help = RunCommand(g + " --help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* cmd : {"send ", "echo-many ", "serve ", "recv ", "expect-refused ", "hold "}) {
    EXPECT_NE(help.output.find(std::string("  ") + cmd), std::string::npos) << cmd;
  }
}

// Unix sockets, no guest: a guestcheck server and client talk to each other, and the
// EAGAIN-retry path of the connect is exercised with many connections at once.
TEST(GuestcheckUnixTest, ServeEchoAndEchoMany) {
  TempDir dir;
  const std::string sock = "unix:" + dir.File("echo");
  Background server(Guestcheck() + " serve --listen " + sock + " --mode echo --count 300");
  ASSERT_TRUE(WaitFor([&] { return UnixListening(dir.File("echo")); }));
  auto r = RunCommand(Guestcheck() + " echo-many " + sock +
                      " --conns 300 --bytes 20000 --connect-parallel 300");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Field(r.output, "ok", "conns"), "300") << r.output;
  const RunResult& s = server.Join();
  EXPECT_EQ(s.exit_code, 0) << s.output;
  EXPECT_EQ(Field(s.output, "ok", "conns"), "300") << s.output;
  EXPECT_EQ(Field(s.output, "ok", "received"), std::to_string(300 * 20000)) << s.output;
}

}  // namespace
}  // namespace vsockd::testing
