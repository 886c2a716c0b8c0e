// Relay over socketpairs: data both ways with checksums, half-close kept in each direction,
// back-pressure (a side that does not read stalls only its own direction), errors.
#include "tools/vsockcat/relay.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <thread>

#include "base/fd.h"
#include "tests/integration/harness.h"

namespace vsockd::vsockcat {
namespace {

using testing::Fnv1a;
using testing::LoopThread;
using testing::PatternBytes;

struct Pair {
  Fd outer, inner;  // the test holds outer; the relay gets inner
};
Pair MakePair() {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  return {Fd(sv[0]), Fd(sv[1])};
}

std::vector<uint8_t> ReadToEof(int fd) {
  std::vector<uint8_t> got;
  uint8_t buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) got.insert(got.end(), buf, buf + n);
  return got;
}

struct Outcome {
  std::atomic<bool> done{false};
  std::atomic<bool> ok{false};
  std::string error;
  RelayStats stats;
};

class RelayTest : public ::testing::TestWithParam<bool> {
 protected:
  // splice(2) to a closed socket raises SIGPIPE; vsockcat ignores it, so do we.
  static void SetUpTestSuite() { ::signal(SIGPIPE, SIG_IGN); }
  void StartRelay(size_t buffer = Relay::kDefaultBufferSize) {
    loop_.Call([&] {
      relay_ = std::make_unique<Relay>(
          loop_.loop(), RelaySide{a_.inner.get(), a_.inner.get(), "a", false},
          RelaySide{b_.inner.get(), b_.inner.get(), "b", false},
          [this](const RelayStats& stats, const Status& st) {
            out_.stats = stats;
            out_.ok = st.ok();
            if (!st.ok()) out_.error = st.error().ToString();
            relay_.reset();  // allowed from on_done
            out_.done = true;
          },
          buffer);
      relay_->set_use_splice(GetParam());
      relay_->Start();
      return 0;
    });
  }
  void TearDown() override {
    loop_.Call([&] {
      relay_.reset();
      return 0;
    });
  }
  Pair a_ = MakePair(), b_ = MakePair();
  LoopThread loop_;
  std::unique_ptr<Relay> relay_;
  Outcome out_;
};

TEST_P(RelayTest, BothDirectionsWithHalfClose) {
  StartRelay(64 * 1024);
  auto ab = PatternBytes(8 << 20, 1), ba = PatternBytes(5 << 20, 2);
  std::vector<uint8_t> got_at_b, got_at_a;
  // a sends and half-closes first; b still reads everything, then answers and half-closes.
  std::thread a_writer([&] {
    EXPECT_TRUE(WriteAll(a_.outer.get(), ab.data(), ab.size()).ok());
    EXPECT_EQ(::shutdown(a_.outer.get(), SHUT_WR), 0);
  });
  std::thread b_reader([&] { got_at_b = ReadToEof(b_.outer.get()); });
  std::thread a_reader([&] { got_at_a = ReadToEof(a_.outer.get()); });
  b_reader.join();                 // a's EOF reached b ...
  EXPECT_FALSE(out_.done.load());  // ... while b -> a is still open
  EXPECT_TRUE(WriteAll(b_.outer.get(), ba.data(), ba.size()).ok());
  EXPECT_EQ(::shutdown(b_.outer.get(), SHUT_WR), 0);
  a_reader.join();
  a_writer.join();
  EXPECT_EQ(Fnv1a(got_at_b), Fnv1a(ab));
  EXPECT_EQ(got_at_b.size(), ab.size());
  EXPECT_EQ(Fnv1a(got_at_a), Fnv1a(ba));
  ASSERT_TRUE(testing::WaitFor([&] { return out_.done.load(); }));
  EXPECT_TRUE(out_.ok) << out_.error;
  EXPECT_EQ(out_.stats.a_to_b, ab.size());
  EXPECT_EQ(out_.stats.b_to_a, ba.size());
  EXPECT_TRUE(out_.stats.a_input_eof);
}

// b does not read: a -> b stalls (bounded), yet b -> a keeps flowing.
TEST_P(RelayTest, BackPressureStallsOnlyTheBlockedDirection) {
  StartRelay(64 * 1024);
  std::atomic<size_t> written{0};
  std::atomic<bool> stop{false};
  ASSERT_TRUE(SetNonBlocking(a_.outer.get()).ok());
  std::thread a_writer([&] {
    std::vector<uint8_t> chunk(65536, 'x');
    while (!stop) {
      ssize_t n = ::send(a_.outer.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
      if (n > 0) {
        written += static_cast<size_t>(n);
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
  });
  // Wait until a's writes stop making progress: everything in between is full.
  size_t last = 0;
  ASSERT_TRUE(testing::WaitFor([&] {
    size_t now = written.load();
    bool stalled = now > 0 && now == last;
    last = now;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return stalled && written.load() == now;
  }));
  // Bounded: socket buffers plus one relay buffer, not the whole stream.
  EXPECT_LT(written.load(), size_t{64} << 20);
  stop = true;
  a_writer.join();
  // a -> b is still full (b never read), yet the other direction works.
  const char msg[] = "still flowing";
  ASSERT_TRUE(WriteAll(b_.outer.get(), msg, sizeof msg).ok());
  char buf[sizeof msg];
  ASSERT_TRUE(SetNonBlocking(a_.outer.get(), false).ok());
  ASSERT_TRUE(ReadExact(a_.outer.get(), buf, sizeof buf).ok());
  EXPECT_STREQ(buf, msg);
  EXPECT_FALSE(out_.done.load());
}

TEST_P(RelayTest, PeerResetEndsTheRelayWithAnError) {
  StartRelay();
  // b's peer goes away entirely while a keeps sending.
  b_.outer.Reset();
  std::vector<uint8_t> data(1 << 20, 'y');
  (void)::send(a_.outer.get(), data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  ASSERT_TRUE(testing::WaitFor([&] { return out_.done.load(); }));
  EXPECT_FALSE(out_.ok);
  EXPECT_NE(out_.error.find('b'), std::string::npos) << out_.error;
}

INSTANTIATE_TEST_SUITE_P(ReadWriteAndSplice, RelayTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "splice" : "read_write";
                         });

}  // namespace
}  // namespace vsockd::vsockcat
