#include "daemon/options.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace vsockd::daemon {
namespace {

ParseOutcome Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "vsockd");
  std::vector<const char*> argv;
  argv.reserve(args.size());
  for (const auto& a : args) argv.push_back(a.c_str());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data());
}

ParseOutcome ParseWithRequired(std::vector<std::string> extra) {
  std::vector<std::string> args = {"--socket", "/run/vm3.sock", "--uds-path", "/run/vm3.vsock"};
  args.insert(args.end(), extra.begin(), extra.end());
  return Parse(args);
}

TEST(DaemonOptionsTest, Defaults) {
  ParseOutcome out = ParseWithRequired({});
  ASSERT_TRUE(out.run) << out.output;
  EXPECT_EQ(out.options.socket_path, "/run/vm3.sock");
  EXPECT_EQ(out.options.uds_path, "/run/vm3.vsock");
  EXPECT_EQ(out.options.guest_cid, 3u);
  EXPECT_EQ(out.options.tx_buffer_size, 262144u);
  EXPECT_EQ(out.options.queue_size, 1024u);
  EXPECT_EQ(out.options.ok_reply, host::OkReply::kHostPort);
  EXPECT_EQ(out.options.connect_timeout, std::chrono::milliseconds(2000));
  EXPECT_EQ(out.options.log_level, LogLevel::kInfo);
}

TEST(DaemonOptionsTest, AllFlags) {
  ParseOutcome out = ParseWithRequired({"--guest-cid", "4294967294", "--tx-buffer-size", "65536",
                                        "--queue-size", "256", "--ok-reply", "guest-port",
                                        "--connect-timeout-ms", "500", "--log-level", "debug"});
  ASSERT_TRUE(out.run) << out.output;
  EXPECT_EQ(out.options.guest_cid, 4294967294u);
  EXPECT_EQ(out.options.tx_buffer_size, 65536u);
  EXPECT_EQ(out.options.queue_size, 256u);
  EXPECT_EQ(out.options.ok_reply, host::OkReply::kGuestPort);
  EXPECT_EQ(out.options.connect_timeout, std::chrono::milliseconds(500));
  EXPECT_EQ(out.options.log_level, LogLevel::kDebug);
}

TEST(DaemonOptionsTest, EqualsSyntax) {
  ParseOutcome out = Parse({"--socket=/a", "--uds-path=/b", "--guest-cid=7"});
  ASSERT_TRUE(out.run) << out.output;
  EXPECT_EQ(out.options.guest_cid, 7u);
}

TEST(DaemonOptionsTest, ReservedCidsAreRejectedWithExitCode2) {
  struct Case {
    const char* cid;
    const char* must_mention;
  };
  for (const Case& c :
       {Case{"0", "reserved"}, Case{"1", "reserved"},
        Case{"2", "guest CID 2 is reserved (VMADDR_CID_HOST); use 3..4294967294"},
        Case{"4294967295", "reserved"}, Case{"4294967296", "32 bits"},
        Case{"18446744073709551615", "32 bits"}, Case{"99999999999999999999999", "32 bits"},
        Case{"-3", "decimal"}, Case{"0x10", "decimal"}, Case{"3a", "decimal"}, Case{"", "empty"}}) {
    ParseOutcome out = ParseWithRequired({"--guest-cid", c.cid});
    EXPECT_FALSE(out.run) << c.cid;
    EXPECT_EQ(out.exit_code, 2) << c.cid;
    EXPECT_NE(out.output.find(c.must_mention), std::string::npos) << c.cid << ": " << out.output;
  }
}

TEST(DaemonOptionsTest, ValidateGuestCidBoundaries) {
  EXPECT_FALSE(ValidateGuestCid(0).ok());
  EXPECT_FALSE(ValidateGuestCid(1).ok());
  EXPECT_FALSE(ValidateGuestCid(2).ok());
  EXPECT_TRUE(ValidateGuestCid(3).ok());
  EXPECT_TRUE(ValidateGuestCid(0xFFFFFFFEull).ok());
  EXPECT_FALSE(ValidateGuestCid(0xFFFFFFFFull).ok());
  EXPECT_FALSE(ValidateGuestCid(0x100000003ull).ok());
  EXPECT_EQ(ValidateGuestCid(2).error().context,
            "guest CID 2 is reserved (VMADDR_CID_HOST); use 3..4294967294");
  auto cid = ParseGuestCid("0003");
  ASSERT_TRUE(cid.ok());
  EXPECT_EQ(*cid, 3u);
}

TEST(DaemonOptionsTest, BadFlagsExitWith2) {
  for (const std::vector<std::string>& extra :
       std::vector<std::vector<std::string>>{{"--no-such-flag"},
                                             {"--ok-reply", "sometimes"},
                                             {"--log-level", "loud"},
                                             {"--queue-size", "1000"},   // not a power of two
                                             {"--queue-size", "65536"},  // above the virtio maximum
                                             {"--queue-size", "0"},
                                             {"--tx-buffer-size", "0"},
                                             {"--tx-buffer-size", "abc"},
                                             {"--connect-timeout-ms", "0"},
                                             {"--guest-cid"},  // missing value
                                             {"stray-positional"}}) {
    ParseOutcome out = ParseWithRequired(extra);
    EXPECT_FALSE(out.run) << extra[0];
    EXPECT_EQ(out.exit_code, 2) << extra[0];
    EXPECT_NE(out.output.find("vsockd: error:"), std::string::npos) << out.output;
  }
}

TEST(DaemonOptionsTest, MissingRequiredPaths) {
  ParseOutcome out = Parse({"--socket", "/a"});
  EXPECT_FALSE(out.run);
  EXPECT_EQ(out.exit_code, 2);
  EXPECT_NE(out.output.find("--uds-path"), std::string::npos) << out.output;
  out = Parse({"--socket", "/a", "--uds-path", "/a"});
  EXPECT_FALSE(out.run);
  EXPECT_EQ(out.exit_code, 2);
}

TEST(DaemonOptionsTest, RunDirIsOptionalAndOffByDefault) {
  ParseOutcome out = ParseWithRequired({});
  ASSERT_TRUE(out.run) << out.output;
  EXPECT_EQ(out.options.run_dir, "");
  out = ParseWithRequired({"--run-dir", "/run/vsockd/"});
  ASSERT_TRUE(out.run) << out.output;
  EXPECT_EQ(out.options.run_dir, "/run/vsockd") << "trailing '/' dropped";
  EXPECT_EQ(out.options.uds_path, "/run/vm3.vsock");
}

TEST(DaemonOptionsTest, RunDirReplacesUdsPath) {
  ParseOutcome out = Parse({"--socket", "/a", "--run-dir", "/run/vsockd"});
  ASSERT_TRUE(out.run) << out.output;
  EXPECT_EQ(out.options.uds_path, "");
  EXPECT_EQ(out.options.run_dir, "/run/vsockd");
  out = Parse({"--socket", "/a"});
  EXPECT_FALSE(out.run);
  EXPECT_EQ(out.exit_code, 2);
  EXPECT_NE(out.output.find("--run-dir"), std::string::npos) << out.output;
  out = Parse({"--uds-path", "/u", "--run-dir", "/r"});
  EXPECT_FALSE(out.run);
  EXPECT_NE(out.output.find("--socket"), std::string::npos) << out.output;
}

TEST(DaemonOptionsTest, HelpAndVersionExit0) {
  ParseOutcome help = Parse({"--help"});
  EXPECT_FALSE(help.run);
  EXPECT_EQ(help.exit_code, 0);
  for (const char* text :
       {"--guest-cid", "--socket", "--uds-path", "--tx-buffer-size", "--queue-size", "--ok-reply",
        "--connect-timeout-ms", "--log-level", "vhost-user-vsock-pci", "CONNECT", "--run-dir",
        "cid_<guest-cid>", "host_X"}) {
    EXPECT_NE(help.output.find(text), std::string::npos) << text;
  }
  ParseOutcome version = Parse({"--version"});
  EXPECT_FALSE(version.run);
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_EQ(version.output, VersionString() + "\n");
  EXPECT_EQ(version.output.rfind("vsockd ", 0), 0u);
}

}  // namespace
}  // namespace vsockd::daemon
