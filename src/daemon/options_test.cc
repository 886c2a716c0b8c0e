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

TEST(DaemonOptionsTest, NoSeqpacketAppliesToEveryVm) {
  ParseOutcome on = ParseWithRequired({});
  ASSERT_TRUE(on.run) << on.output;
  EXPECT_TRUE(on.options.seqpacket);
  for (const auto& vm : on.options.vms) EXPECT_TRUE(vm.seqpacket);
  ParseOutcome off = ParseWithRequired({"--no-seqpacket"});
  ASSERT_TRUE(off.run) << off.output;
  EXPECT_FALSE(off.options.seqpacket);
  ASSERT_FALSE(off.options.vms.empty());
  for (const auto& vm : off.options.vms) EXPECT_FALSE(vm.seqpacket);
  // With --vm, every VM inherits it.
  ParseOutcome multi = Parse({"--no-seqpacket", "--vm", "guest-cid=3,socket=/s3,uds-path=/u3",
                              "--vm", "guest-cid=4,socket=/s4,uds-path=/u4"});
  ASSERT_TRUE(multi.run) << multi.output;
  ASSERT_EQ(multi.options.vms.size(), 2u);
  EXPECT_FALSE(multi.options.vms[0].seqpacket);
  EXPECT_FALSE(multi.options.vms[1].seqpacket);
  // It is a flag: no value.
  ParseOutcome bad = ParseWithRequired({"--no-seqpacket=maybe"});
  EXPECT_FALSE(bad.run);
  EXPECT_EQ(bad.exit_code, 2);
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
  out = Parse({"--run-dir", "/r", "--uds-path", "/u"});
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

// --- Several VMs: --vm and --config -------------------------------------------------------

TEST(DaemonOptionsTest, VmSpecAcceptsDashAndUnderscoreKeys) {
  const std::string vm3 =
      "guest-cid=3,socket=/s3,uds-path=/u3,tx-buffer-size=65536,queue-size=256,"
      "groups=group1+groupA";
  ParseOutcome out =
      Parse({"--vm", vm3, "--vm",
             "guest_cid=4,socket=/s4,uds_path=/u4,tx_buffer_size=32768,queue_size=512",
             "--connect-timeout-ms", "700", "--ok-reply", "guest-port", "--workers", "2"});
  ASSERT_TRUE(out.run) << out.output;
  ASSERT_EQ(out.options.vms.size(), 2u);
  const VmOptions& a = out.options.vms[0];
  EXPECT_EQ(a.guest_cid, 3u);
  EXPECT_EQ(a.socket_path, "/s3");
  EXPECT_EQ(a.uds_path, "/u3");
  EXPECT_EQ(a.tx_buffer_size, 65536u);
  EXPECT_EQ(a.queue_size, 256u);
  EXPECT_EQ(a.groups, (std::vector<std::string>{"group1", "groupA"}));
  const VmOptions& b = out.options.vms[1];
  EXPECT_EQ(b.guest_cid, 4u);
  EXPECT_EQ(b.uds_path, "/u4");
  EXPECT_EQ(b.tx_buffer_size, 32768u);
  EXPECT_EQ(b.groups, (std::vector<std::string>{"default"}));
  // Global flags are every VM's defaults.
  EXPECT_EQ(b.connect_timeout, std::chrono::milliseconds(700));
  EXPECT_EQ(b.ok_reply, host::OkReply::kGuestPort);
  EXPECT_EQ(out.options.workers, 2u);
}

TEST(DaemonOptionsTest, SingleVmFormFillsOneVm) {
  ParseOutcome out = ParseWithRequired({"--groups", "a+b"});
  ASSERT_TRUE(out.run) << out.output;
  ASSERT_EQ(out.options.vms.size(), 1u);
  EXPECT_EQ(out.options.vms[0].socket_path, "/run/vm3.sock");
  EXPECT_EQ(out.options.vms[0].groups, (std::vector<std::string>{"a", "b"}));
}

TEST(DaemonOptionsTest, BadVmSpecsExit2WithTheReason) {
  struct Case {
    std::vector<std::string> args;
    const char* must_mention;
  };
  const std::string ok4 = "guest-cid=4,socket=/s4,uds-path=/u4";
  std::vector<Case> cases = {
      {{"--vm", "guest-cid=3,socket=/s,uds-path=/u,colour=red"}, "unknown key 'colour'"},
      {{"--vm", "guest-cid=3,socket=/s"}, "uds-path is required"},
      {{"--vm", "guest-cid=3,uds-path=/u"}, "socket is required"},
      {{"--vm", "guest-cid=x,socket=/s,uds-path=/u"}, "not a decimal"},
      {{"--vm", "guest-cid=3,socket=/s,uds-path=/u,queue-size=300"}, "power of two"},
      {{"--vm", "guest-cid=3,socket=/s,uds-path=/u,tx-buffer-size=10"}, "out of range"},
      {{"--vm", "guest-cid=3,socket=/s,uds-path=/u,groups=a++b"}, "empty group"},
      {{"--vm", "guest-cid=3,socket=/s,uds-path=/u,guest_cid=4"}, "given twice"},
      {{"--vm", "guest-cid=3,socket=/s,novalue"}, "key=value"},
      {{"--vm", "guest-cid=3,socket=/s,forward-cid=1"}, "not supported"},
      {{"--vm", "guest-cid=0,socket=/s,uds-path=/u"}, "reserved"},
      {{"--vm", "guest-cid=1,socket=/s,uds-path=/u"}, "reserved"},
      {{"--vm", "guest-cid=2,socket=/s,uds-path=/u"}, "reserved"},
      {{"--vm", "guest-cid=4294967295,socket=/s,uds-path=/u"}, "reserved"},
      {{"--vm", "guest-cid=4294967296,socket=/s,uds-path=/u"}, "32 bits"},
      {{"--vm", "guest-cid=4,socket=/s,uds-path=/u", "--vm", ok4}, "duplicate guest CID 4"},
      {{"--vm", "guest-cid=3,socket=/s4,uds-path=/u", "--vm", ok4}, "duplicate path '/s4'"},
      {{"--vm", "guest-cid=3,socket=/s,uds-path=/u4", "--vm", ok4}, "duplicate path '/u4'"},
      {{"--vm", ok4, "--socket", "/x"}, "cannot be mixed"},
      {{"--vm", ok4, "--guest-cid", "5"}, "cannot be mixed"},
      {{"--vm", ok4, "--uds-path", "/x"}, "cannot be mixed"},
      {{"--vm", ok4, "--config", "/nonexistent.yaml"}, "cannot be mixed"},
  };
  for (const auto& c : cases) {
    ParseOutcome out = Parse(c.args);
    EXPECT_FALSE(out.run) << c.args[1];
    EXPECT_EQ(out.exit_code, 2) << c.args[1];
    EXPECT_NE(out.output.find(c.must_mention), std::string::npos)
        << "wanted '" << c.must_mention << "' in: " << out.output;
  }
}

TEST(DaemonOptionsTest, YamlConfigLikeVhostDeviceVsock) {
  VmOptions defaults;
  defaults.connect_timeout = std::chrono::milliseconds(900);
  auto vms = ParseConfigYaml(R"(vms:
    - guest_cid: 3
      socket: /tmp/vhost3.socket
      uds_path: /tmp/vm3.vsock
      tx_buffer_size: 65536
      queue_size: 1024
      groups: group1+groupA
    - guest-cid: 4
      socket: /tmp/vhost4.socket
      uds-path: /tmp/vm4.vsock
      groups: [group2, groupB]
)",
                             defaults);
  ASSERT_TRUE(vms.ok()) << vms.error().ToString();
  ASSERT_EQ(vms->size(), 2u);
  EXPECT_EQ((*vms)[0].guest_cid, 3u);
  EXPECT_EQ((*vms)[0].tx_buffer_size, 65536u);
  EXPECT_EQ((*vms)[0].groups, (std::vector<std::string>{"group1", "groupA"}));
  EXPECT_EQ((*vms)[1].uds_path, "/tmp/vm4.vsock");
  EXPECT_EQ((*vms)[1].groups, (std::vector<std::string>{"group2", "groupB"}));
  EXPECT_EQ((*vms)[1].connect_timeout, std::chrono::milliseconds(900));
}

TEST(DaemonOptionsTest, BadYamlConfigsSayWhatIsWrong) {
  struct Case {
    const char* text;
    const char* must_mention;
  };
  for (const Case& c : std::vector<Case>{
           {"vms: [", "YAML error"},
           {"- a", "expected a map"},
           {"vms: []", "non-empty list"},
           {"machines: []", "unknown top-level key 'machines'"},
           {"vms:\n  - 3\n", "not a map"},
           {"vms:\n  - guest_cid: 3\n    socket: /s\n", "uds-path is required"},
           {"vms:\n  - guest_cid: 3\n    socket: /s\n    uds_path: /u\n    speed: 9\n",
            "unknown key 'speed'"},
           {"vms:\n  - guest_cid: two\n    socket: /s\n    uds_path: /u\n", "not a decimal"},
           {"vms:\n  - guest_cid: 2\n    socket: /s\n    uds_path: /u\n", "reserved"},
           {"vms:\n  - guest_cid: 3\n    socket: {a: 1}\n    uds_path: /u\n", "single value"},
       }) {
    auto vms = ParseConfigYaml(c.text, VmOptions{}, "test.yaml");
    ASSERT_FALSE(vms.ok()) << c.text;
    EXPECT_NE(vms.error().context.find(c.must_mention), std::string::npos)
        << "wanted '" << c.must_mention << "' in: " << vms.error().context;
    EXPECT_NE(vms.error().context.find("test.yaml"), std::string::npos);
  }
  // Duplicates across the file are ValidateVms' job (ParseCommandLine runs it).
  auto dup = ParseConfigYaml(
      "vms:\n  - {guest_cid: 3, socket: /a, uds_path: /b}\n  - {guest_cid: 3, socket: /c, "
      "uds_path: /d}\n",
      VmOptions{});
  ASSERT_TRUE(dup.ok());
  Status s = ValidateVms(*dup);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().context.find("duplicate guest CID 3"), std::string::npos);
  auto missing = LoadConfigFile("/nonexistent/vsockd.yaml", VmOptions{});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().context.find("/nonexistent/vsockd.yaml"), std::string::npos);
}

TEST(DaemonOptionsTest, HelpDocumentsTheMultiVmForms) {
  ParseOutcome help = Parse({"--help"});
  for (const char* text :
       {"--vm", "--config", "--workers", "--groups", "guest-cid=3", "vms:", "cannot be", "group"}) {
    EXPECT_NE(help.output.find(text), std::string::npos) << text;
  }
}

}  // namespace
}  // namespace vsockd::daemon
