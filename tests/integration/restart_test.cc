// vsockd restarted under a running VM (`--keep-sessions`, daemon/session_keeper.h): the worker
// SIGKILLed mid-transfer, and an upgrade (SIGUSR2) under traffic. The virtual guest's
// vhost-user session must go on without a reconnect: the guest's open connections get an RST
// promptly, their host peers see EOF, new connections work both ways, and the rings continue
// (the same guest keeps working, which it could not if a chain were lost or completed twice).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <future>
#include <sstream>
#include <thread>

#include "tests/integration/echo_server.h"
#include "tests/integration/guest_util.h"
#include "tests/integration/harness.h"
#include "vguest/guest.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kCid = 3;
constexpr uint32_t kEchoPort = 9999;
constexpr uint32_t kGuestPort = 5000;

class RestartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = std::make_unique<Daemon>(
        dir_, kCid,
        std::vector<std::string>{"--keep-sessions", "--control", dir_.File("control.sock")});
    ASSERT_TRUE(daemon_->Start().ok()) << daemon_->Log();
    ASSERT_TRUE(WaitFor([&] { return FirstChildOf(daemon_->pid()) > 0; }));
    vguest::GuestOptions options;
    options.socket_path = daemon_->socket_path();
    auto guest = loop_.Call([&] { return vguest::Guest::Attach(loop_.loop(), options); });
    ASSERT_TRUE(guest.ok()) << guest.error().ToString() << "\n" << daemon_->Log();
    guest_ = std::move(*guest);
    Status listening = loop_.Call([&] {
      return guest_->Listen(kGuestPort, [&](vguest::Stream* s) {
        echoes_.push_back(std::make_unique<StreamEcho>(s));
      });
    });
    ASSERT_TRUE(listening.ok()) << listening.error().ToString();
  }
  void TearDown() override {
    loop_.Call([&] {
      echoes_.clear();
      guest_.reset();
      return 0;
    });
    if (daemon_ && daemon_->Running()) {
      int status = daemon_->Stop();
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << "the keeper did not exit cleanly on SIGTERM:\n"
          << daemon_->Log();
    }
  }

  vguest::Stream* ConnectToHost(uint32_t port) {
    std::promise<std::pair<vguest::Stream*, Status>> done;
    loop_.Call([&] {
      guest_->Connect(port, [&](vguest::Stream* s, const Status& st) { done.set_value({s, st}); });
      return 0;
    });
    auto f = done.get_future();
    if (f.wait_for(10s) != std::future_status::ready) return nullptr;
    auto [stream, status] = f.get();
    return status.ok() ? stream : nullptr;
  }

  // A guest -> host echo round trip of `bytes` on a new connection, checked.
  void GuestToHostRoundTrip(size_t bytes, uint32_t seed) {
    vguest::Stream* s = ConnectToHost(kEchoPort);
    ASSERT_NE(s, nullptr) << daemon_->Log();
    auto obs = std::make_shared<StreamObserver>();
    auto data = PatternBytes(bytes, seed);
    std::unique_ptr<StreamDriver> driver;
    loop_.Call([&] {
      driver = std::make_unique<StreamDriver>(s, obs, data);
      driver->Start();
      return 0;
    });
    ASSERT_TRUE(WaitFor([&] { return obs->eof.load(); }, 60s)) << daemon_->Log();
    EXPECT_EQ(obs->received.load(), data.size());
    EXPECT_EQ(obs->hash.load(), Fnv1a(data));
    loop_.Call([&] {
      s->Close();
      driver.reset();
      return 0;
    });
  }

  // A host -> guest echo round trip through the hybrid socket, checked.
  void HostToGuestRoundTrip(size_t bytes, uint32_t seed) {
    std::string reply;
    auto fd = HybridConnect(daemon_->uds_path(), kGuestPort, &reply);
    ASSERT_TRUE(fd.ok()) << fd.error().ToString() << "\n" << daemon_->Log();
    SetSocketTimeouts(fd->get(), 30s);
    auto data = PatternBytes(bytes, seed);
    // The echo answers while we write: read on this thread, write on another.
    std::thread writer([&] {
      EXPECT_TRUE(WriteAll(fd->get(), data.data(), data.size()).ok());
      ::shutdown(fd->get(), SHUT_WR);
    });
    std::string back = ReadToEof(fd->get());
    writer.join();
    EXPECT_EQ(back.size(), data.size());
    EXPECT_EQ(Fnv1a({reinterpret_cast<const uint8_t*>(back.data()), back.size()}), Fnv1a(data));
  }

  // Kills or upgrades the worker with `sig` (to the worker for SIGKILL, to the keeper for
  // SIGUSR2) while the guest holds an open, idle connection to the host and one from it;
  // checks what the issue asks of a restart.
  void RestartUnderOpenConnections(int sig) {
    EchoServer echo(daemon_->uds_path() + "_" + std::to_string(kEchoPort));
    ASSERT_TRUE(echo.ok());
    GuestToHostRoundTrip(1 << 20, 1);  // the rings have been used before the restart
    vguest::Stream* open = ConnectToHost(kEchoPort);
    ASSERT_NE(open, nullptr);
    auto obs = std::make_shared<StreamObserver>();
    std::unique_ptr<StreamDriver> idle;
    loop_.Call([&] {
      idle = std::make_unique<StreamDriver>(open, obs, std::vector<uint8_t>{}, false);
      idle->Start();
      return 0;
    });
    ASSERT_TRUE(WaitFor([&] { return echo.open_now() == 1; }));

    const pid_t old_worker = FirstChildOf(daemon_->pid());
    ASSERT_GT(old_worker, 0);
    const auto start = std::chrono::steady_clock::now();
    ASSERT_EQ(::kill(sig == SIGKILL ? old_worker : daemon_->pid(), sig), 0);

    // The guest's connection gets an RST (no hang), its host peer EOF.
    ASSERT_TRUE(WaitFor([&] { return obs->closed.load(); }, 10s))
        << "the guest's open connection was not reset after the restart\n"
        << daemon_->Log();
    const auto reset_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::steady_clock::now() - start)
                              .count();
    EXPECT_EQ(obs->closed_code.load(), ECONNRESET);
    EXPECT_TRUE(WaitFor([&] { return echo.open_now() == 0; })) << "the host peer saw no EOF";
    const pid_t new_worker = FirstChildOf(daemon_->pid());
    EXPECT_GT(new_worker, 0);
    EXPECT_NE(new_worker, old_worker);
    ASSERT_TRUE(WaitFor([&] { return UnixListening(daemon_->uds_path()); }));

    // New connections both ways, on the same vhost-user session (never reattached).
    GuestToHostRoundTrip(4 << 20, 2);
    const auto first_new_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::steady_clock::now() - start)
                                  .count();
    HostToGuestRoundTrip(4 << 20, 3);
    std::cout << "[ restart ] " << (sig == SIGKILL ? "SIGKILL of the worker" : "upgrade (SIGUSR2)")
              << ": RST in the guest after " << reset_ms << " ms, first new connection (4 MiB "
              << "echoed) after " << first_new_ms << " ms\n";
    EXPECT_NE(daemon_->Log().find("resetting 1 connections opened before the restart"),
              std::string::npos)
        << daemon_->Log();
    loop_.Call([&] {
      idle.reset();
      return 0;
    });
  }

  TempDir dir_;
  std::unique_ptr<Daemon> daemon_;
  LoopThread loop_;
  std::unique_ptr<vguest::Guest> guest_;
  std::vector<std::unique_ptr<StreamEcho>> echoes_;
};

TEST_F(RestartTest, WorkerKilledTheSessionGoesOn) { RestartUnderOpenConnections(SIGKILL); }

TEST_F(RestartTest, UpgradeHandsTheSessionOver) { RestartUnderOpenConnections(SIGUSR2); }

// `vsockctl upgrade` asks for the same upgrade as SIGUSR2 (through the worker's control socket).
TEST_F(RestartTest, UpgradeThroughVsockctl) {
  EchoServer echo(daemon_->uds_path() + "_" + std::to_string(kEchoPort));
  ASSERT_TRUE(echo.ok());
  const pid_t worker = FirstChildOf(daemon_->pid());
  ASSERT_GT(worker, 0);
  RunResult r = RunCommand(BuiltBinary("src/tools/vsockctl/vsockctl") + " --socket " +
                           dir_.File("control.sock") + " upgrade");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("upgrading"), std::string::npos) << r.output;
  ASSERT_TRUE(WaitFor([&] {
    pid_t w = FirstChildOf(daemon_->pid());
    return w > 0 && w != worker && UnixListening(daemon_->uds_path()) &&
           UnixListening(dir_.File("control.sock"));
  })) << daemon_->Log();
  GuestToHostRoundTrip(1 << 20, 20);
  HostToGuestRoundTrip(1 << 20, 21);
}

// Killed twice in a row: the kept session survives any number of workers.
TEST_F(RestartTest, WorkerKilledTwice) {
  EchoServer echo(daemon_->uds_path() + "_" + std::to_string(kEchoPort));
  ASSERT_TRUE(echo.ok());
  for (uint32_t round = 0; round < 2; ++round) {
    const pid_t worker = FirstChildOf(daemon_->pid());
    ASSERT_GT(worker, 0);
    ASSERT_EQ(::kill(worker, SIGKILL), 0);
    ASSERT_TRUE(WaitFor([&] {
      pid_t w = FirstChildOf(daemon_->pid());
      return w > 0 && w != worker && UnixListening(daemon_->uds_path());
    }));
    GuestToHostRoundTrip(1 << 20, 10 + round);
  }
}

}  // namespace
}  // namespace vsockd::testing
