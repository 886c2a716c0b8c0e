// VmFixture<Suite>: the GoogleTest fixture of every real-guest test suite: one vsockd (the
// real binary, with --run-dir so the preload shim finds it) and one test guest booted under
// QEMU against it, shared by the suite's tests (a boot costs seconds under TCG).
//
// A test that leaves the guest dead (a timeout kills it, a test powers it off) gets a fresh
// one in the next SetUp. Without the image or QEMU the tests skip, saying how to build the
// image; with VSOCKD_REQUIRE_VM=1 (scripts/test.sh sets it) they fail instead.
//
// CRTP: each suite `class FooTest : public VmFixture<FooTest>` has its own static state.
// A suite may define `static std::vector<std::string> DaemonArgs()` for extra vsockd flags.
// Callers: the tests in tests/vm. Threading: the test thread only.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/harness.h"
#include "tests/vm/vm.h"

namespace vsockd::vmtest {

inline constexpr auto kGuestCommandTimeout = std::chrono::seconds(120);
inline constexpr uint64_t kGuestCid = 3;

// Milliseconds since `start` (for the "[ vm ] ..." duration lines).
inline long long MsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               start)
      .count();
}

inline bool RequireVm() {
  const char* v = std::getenv("VSOCKD_REQUIRE_VM");
  return v != nullptr && std::string(v) == "1";
}

template <typename Suite>
class VmFixture : public ::testing::Test {
 public:
  static std::vector<std::string> DaemonArgs() { return {}; }

  static void SetUpTestSuite() {
    unavailable_.clear();
    setup_error_.clear();
    Status qemu = CheckQemu();
    Status image = CheckImage(DefaultImageDir());
    if (!qemu.ok()) unavailable_ = qemu.error().ToString();
    if (!image.ok()) unavailable_ = image.error().ToString();
    if (!unavailable_.empty()) return;
    dir_ = new testing::TempDir;
    std::vector<std::string> args = {"--run-dir", dir_->File("run")};
    for (auto& a : Suite::DaemonArgs()) args.push_back(a);
    daemon_ = new testing::Daemon(*dir_, kGuestCid, args);
    Status started = daemon_->Start();
    if (!started.ok()) setup_error_ = "vsockd did not start: " + started.error().ToString();
  }

  static void TearDownTestSuite() {
    if (vm_ != nullptr && vm_->Running()) {
      Status off = vm_->Poweroff(std::chrono::seconds(60));
      if (!off.ok()) ADD_FAILURE() << "poweroff: " << off.error().ToString();
    }
    vm_.reset();
    if (daemon_ != nullptr) {
      if (!daemon_->Running()) {
        ADD_FAILURE() << "vsockd died during the suite; log:\n" << daemon_->Log();
      } else {
        int status = daemon_->Stop();
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
          ADD_FAILURE() << "vsockd did not exit cleanly (wait status " << status << "); log:\n"
                        << daemon_->Log();
        }
      }
    }
    delete daemon_;
    daemon_ = nullptr;
    delete dir_;
    dir_ = nullptr;
  }

 protected:
  void SetUp() override {
    if (!unavailable_.empty()) {
      if (RequireVm()) FAIL() << "VSOCKD_REQUIRE_VM=1 but: " << unavailable_;
      GTEST_SKIP() << unavailable_;
    }
    ASSERT_TRUE(setup_error_.empty()) << setup_error_;
    ASSERT_NO_FATAL_FAILURE(EnsureVm());
  }

  // Boots the suite's VM unless it is running.
  void EnsureVm() {
    if (vm_ != nullptr && vm_->Running()) return;
    vm_.reset();
    VmOptions o;
    o.image_dir = DefaultImageDir();
    o.vhost_socket = daemon_->socket_path();
    o.name = ::testing::UnitTest::GetInstance()->current_test_suite()->name();
    o.console_log_path = dir_->File("console.log");
    auto vm = Vm::Boot(o);
    if (!vm.ok()) {
      // Sticky: the following tests fail at once instead of each waiting for a boot.
      setup_error_ = vm.error().ToString() + "\nvsockd log:\n" + daemon_->Log();
      FAIL() << setup_error_;
    }
    vm_ = std::move(*vm);
    Status dev = vm_->WaitForVsockDevice();
    if (!dev.ok()) {
      setup_error_ = dev.error().ToString() + "\nvsockd log:\n" + daemon_->Log();
      FAIL() << setup_error_;
    }
    std::cout << "[ vm ] booted in " << vm_->boot_time().count() << " ms\n";
  }

  // Powers the VM off now (the next SetUp boots a fresh one); for tests that replace it.
  static void DropVm() { vm_.reset(); }

  Vm& vm() { return *vm_; }
  static std::unique_ptr<Vm>& vm_ptr() { return vm_; }
  testing::Daemon& daemon() { return *daemon_; }
  testing::TempDir& dir() { return *dir_; }
  std::string RunDir() { return dir_->File("run"); }
  // Runs a guest command that must succeed; the failure message has the output.
  std::string GuestOk(const std::string& command,
                      std::chrono::milliseconds timeout = kGuestCommandTimeout) {
    auto r = vm_->RunOk(command, timeout);
    EXPECT_TRUE(r.ok()) << command << ": " << (r.ok() ? "" : r.error().ToString());
    return r.ok() ? *r : "";
  }
  // Output of a diagnostic command, or why there is none.
  std::string Diag(const std::string& command) {
    auto r = vm_->Run(command, kGuestCommandTimeout);
    return r.ok() ? r->output : r.error().ToString();
  }
  std::string DaemonLog() { return daemon_->Log(); }
  // The host socket a guest's connect to host port `port` reaches (<uds-path>_<port>).
  static std::string HostPath(uint32_t port) {
    return daemon_->uds_path() + "_" + std::to_string(port);
  }

  // Waits (polling in the guest) until the guest file `path` contains `needle`; a failure
  // carries the file and the vsockd log.
  ::testing::AssertionResult WaitGuestLog(const std::string& path, const std::string& needle,
                                          std::chrono::seconds timeout = std::chrono::seconds(60)) {
    auto r = vm_->Run("i=0; until grep -qF -- '" + needle + "' " + path +
                          " 2>/dev/null; do i=$((i+1)); if [ $i -gt " +
                          std::to_string(timeout.count() * 10) + " ]; then cat " + path +
                          "; exit 1; fi; sleep 0.1; done",
                      timeout + std::chrono::seconds(30));
    if (!r.ok()) return ::testing::AssertionFailure() << r.error().ToString();
    if (r->exit_status != 0) {
      return ::testing::AssertionFailure()
             << "'" << needle << "' never appeared in " << path << ":\n"
             << r->output << "\nvsockd log:\n"
             << DaemonLog();
    }
    return ::testing::AssertionSuccess();
  }

  // Host -> guest port `port` through vsockd (HybridConnect on the uds-path), retrying while
  // the guest's listener comes up (each early try gets "ERR ..."). On failure, the last
  // attempt's error (which quotes the last reply line). `reply` (if given) gets the last
  // reply line.
  Result<Fd> ConnectToGuest(uint32_t port, std::chrono::seconds timeout = std::chrono::seconds(60),
                            std::string* reply = nullptr) {
    Result<Fd> conn = MakeError(ETIMEDOUT, "no connect attempt to guest port {}", port);
    testing::WaitFor(
        [&] {
          conn = testing::HybridConnect(daemon_->uds_path(), port, reply);
          if (conn.ok()) return true;
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
          return false;
        },
        timeout);
    return conn;
  }

 private:
  static inline std::string unavailable_;  // why the suite cannot run (skip or fail)
  static inline std::string setup_error_;
  static inline testing::TempDir* dir_ = nullptr;
  static inline testing::Daemon* daemon_ = nullptr;
  static inline std::unique_ptr<Vm> vm_;
};

}  // namespace vsockd::vmtest
