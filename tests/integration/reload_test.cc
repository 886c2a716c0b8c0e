// vsockd --config FILE reloaded with SIGHUP (Daemon::Reload) while it serves: VMs added,
// removed, restarted when their settings change, given new budgets in place; a bad file
// changes nothing; and a VM the reload does not concern keeps carrying a transfer byte-exact
// through it all. The real vsockd binary, virtual guests (vguest) and real AF_UNIX peers.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <thread>

#include "tests/integration/guest_util.h"
#include "tests/integration/harness.h"
#include "vguest/guest.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;

class ReloadTest : public ::testing::Test {
 protected:
  void TearDown() override {
    loop_.Call([&] {
      echoes_.clear();
      guests_.clear();
      return 0;
    });
    if (proc_.Running()) {
      int status = proc_.Stop();
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << proc_.Log();
    }
  }

  std::string Socket(uint64_t cid) const { return dir_.File("vhost" + std::to_string(cid)); }
  std::string Uds(uint64_t cid) const { return dir_.File("vm" + std::to_string(cid) + ".vsock"); }
  std::string Config() const { return dir_.File("vsockd.yaml"); }

  // Writes the config: one entry per CID, with `extra[cid]` lines (YAML, 4-space indented).
  void WriteConfig(const std::vector<uint64_t>& cids, std::map<uint64_t, std::string> extra = {}) {
    std::ofstream out(Config() + ".tmp");
    out << "vms:\n";
    for (uint64_t cid : cids) {
      out << "  - guest_cid: " << cid << "\n    socket: " << Socket(cid)
          << "\n    uds_path: " << Uds(cid) << "\n"
          << extra[cid];
    }
    out.close();
    // Whole files only: vsockd may read it at any time.
    ASSERT_EQ(::rename((Config() + ".tmp").c_str(), Config().c_str()), 0);
  }

  void Start(const std::vector<uint64_t>& cids) {
    WriteConfig(cids);
    ASSERT_TRUE(
        proc_.Start({BuiltBinary("src/daemon/vsockd"), "--config", Config()}, dir_.File("log"))
            .ok());
    for (uint64_t cid : cids) Attach(cid);
  }

  void Attach(uint64_t cid) {
    vguest::GuestOptions options;
    options.socket_path = Socket(cid);
    options.attach_timeout = 10s;
    auto guest = loop_.Call([&] { return vguest::Guest::Attach(loop_.loop(), options); });
    ASSERT_TRUE(guest.ok()) << guest.error().ToString() << "\n" << proc_.Log();
    loop_.Call([&] {
      guests_[cid] = std::move(*guest);
      return 0;
    });
  }

  // Guest `cid` echoes whatever host programs send to `port`.
  void Echo(uint64_t cid, uint32_t port) {
    Status st = loop_.Call([&] {
      return guests_[cid]->Listen(
          port, [this](vguest::Stream* s) { echoes_.push_back(std::make_unique<StreamEcho>(s)); });
    });
    ASSERT_TRUE(st.ok()) << st.error().ToString();
  }

  size_t Count(const std::string& needle) const {
    const std::string log = proc_.Log();
    size_t n = 0;
    for (size_t at = log.find(needle); at != std::string::npos; at = log.find(needle, at + 1)) {
      ++n;
    }
    return n;
  }

  // SIGHUP, then waits for the reload's last line (its summary, or its refusal).
  void Reload() {
    ASSERT_EQ(::kill(proc_.pid(), SIGHUP), 0);
    // The summary (or the refusal) is the reload's last line.
    ASSERT_TRUE(WaitFor([&] {
      return Count("VM(s) now") + Count("nothing changed") >= reloads_ + 1;
    })) << proc_.Log();
    ++reloads_;
  }

  // A host program's echo round trip through VM `cid`'s guest port `port`.
  void ExpectEcho(uint64_t cid, uint32_t port) {
    auto fd = HybridConnect(Uds(cid), port);
    ASSERT_TRUE(fd.ok()) << fd.error().ToString() << "\n" << proc_.Log();
    SetSocketTimeouts(fd->get(), 10s);
    const std::string msg = "ping " + std::to_string(cid);
    ASSERT_EQ(::write(fd->get(), msg.data(), msg.size()), static_cast<ssize_t>(msg.size()));
    std::string got(msg.size(), '\0');
    size_t have = 0;
    while (have < got.size()) {
      ssize_t n = ::read(fd->get(), got.data() + have, got.size() - have);
      ASSERT_GT(n, 0) << proc_.Log();
      have += static_cast<size_t>(n);
    }
    EXPECT_EQ(got, msg);
  }

  TempDir dir_;
  Subprocess proc_;
  LoopThread loop_;
  std::map<uint64_t, std::unique_ptr<vguest::Guest>> guests_;
  std::vector<std::unique_ptr<StreamEcho>> echoes_;
  size_t reloads_ = 0;
};

TEST_F(ReloadTest, VmsComeAndGoWhileAnUnchangedVmsTransferGoesOnByteExact) {
  Start({3, 4});
  Echo(3, 7000);

  // A 32 MiB round trip through VM 3 that spans every reload below: the test thread reads
  // the echo only between reloads, and flow control (socket buffers, the guest's credit:
  // a few MiB at most) keeps the writer from getting far ahead, so the transfer is in flight
  // during each reload.
  auto fd = HybridConnect(Uds(3), 7000);
  ASSERT_TRUE(fd.ok()) << fd.error().ToString() << "\n" << proc_.Log();
  SetSocketTimeouts(fd->get(), 30s);
  const std::vector<uint8_t> data = PatternBytes(32u << 20, 42);
  std::jthread writer([&] {  // joined on any exit, even a failed ASSERT
    size_t off = 0;
    while (off < data.size()) {
      size_t n = std::min<size_t>(64 * 1024, data.size() - off);
      ssize_t w = ::write(fd->get(), data.data() + off, n);
      if (w <= 0) return;
      off += static_cast<size_t>(w);
    }
  });
  Fnv1aStream hash;
  size_t received = 0;
  std::vector<uint8_t> buf(64 * 1024);
  auto read_some = [&](size_t until) {
    while (received < until) {
      ssize_t n = ::read(fd->get(), buf.data(), buf.size());
      if (n <= 0) break;
      hash.Update(std::span<const uint8_t>(buf.data(), static_cast<size_t>(n)));
      received += static_cast<size_t>(n);
    }
  };
  read_some(1u << 20);

  // VM 4 removed, VM 5 added: 4's sockets go, 5's appear; 3 is not touched.
  WriteConfig({3, 5});
  Reload();
  EXPECT_FALSE(PathExists(Socket(4))) << proc_.Log();
  EXPECT_FALSE(PathExists(Uds(4))) << proc_.Log();
  ASSERT_TRUE(UnixListening(Socket(5))) << proc_.Log();
  Attach(5);
  Echo(5, 7001);
  ExpectEcho(5, 7001);
  read_some(8u << 20);

  // A bad file changes nothing, and says why.
  {
    std::ofstream(Config()) << "vms:\n  - guest_cid: 3\n    socket: " << Socket(3)
                            << "\n    uds_path: " << Uds(3) << "\n    max-connections: none\n";
  }
  Reload();
  EXPECT_EQ(Count("nothing changed"), 1u) << proc_.Log();
  EXPECT_NE(proc_.Log().find("max-connections"), std::string::npos) << proc_.Log();
  ASSERT_TRUE(UnixListening(Socket(5))) << "VM 5 must survive a bad file\n" << proc_.Log();
  ExpectEcho(5, 7001);

  // New budgets for 5: applied in place (its guest stays attached, its listener works).
  WriteConfig({3, 5}, {{5, "    max-connections: 16\n    allow-guest-ports: [7001]\n"}});
  Reload();
  EXPECT_EQ(Count("1 with new limits"), 1u) << proc_.Log();
  ExpectEcho(5, 7001);

  // Another setting of 5 changes: it is restarted (its guest must attach again).
  WriteConfig({3, 5}, {{5, "    tx_buffer_size: 65536\n"}});
  Reload();
  EXPECT_EQ(Count("1 restarted"), 1u) << proc_.Log();
  ASSERT_TRUE(UnixListening(Socket(5))) << proc_.Log();

  read_some(data.size());
  writer.join();
  EXPECT_EQ(received, data.size()) << proc_.Log();
  EXPECT_EQ(hash.hash(), Fnv1a(data)) << "VM 3's transfer must go on byte-exact";
  EXPECT_EQ(proc_.Log().find("CID 3 changed"), std::string::npos) << proc_.Log();
}

TEST_F(ReloadTest, SighupWithoutAConfigFileChangesNothing) {
  TempDir dir;
  Subprocess proc;
  ASSERT_TRUE(proc.Start({BuiltBinary("src/daemon/vsockd"), "--socket", dir.File("s"), "--uds-path",
                          dir.File("u")},
                         dir.File("log"))
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return UnixListening(dir.File("s")); }));
  ASSERT_EQ(::kill(proc.pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitFor([&] {
    return proc.Log().find("not started with --config") != std::string::npos;
  })) << proc.Log();
  EXPECT_TRUE(proc.Running());
  EXPECT_TRUE(UnixListening(dir.File("s")));
  EXPECT_EQ(proc.Stop(), 0);
}

}  // namespace
}  // namespace vsockd::testing
