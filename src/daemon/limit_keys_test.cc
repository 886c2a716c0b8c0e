// Budget and policy keys through every way they reach vsockd: --vm, the YAML config (with its
// defaults map and list forms) and the global flags; errors name the key (and the line).
#include "daemon/limit_keys.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "daemon/options.h"

namespace vsockd::daemon {
namespace {

ParseOutcome Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "vsockd");
  std::vector<const char*> argv;
  argv.reserve(args.size());
  for (const auto& a : args) argv.push_back(a.c_str());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data());
}

constexpr const char* kVm = "guest-cid=3,socket=/run/vm3.sock,uds-path=/run/vm3.vsock";

TEST(LimitKeysTest, DefaultsAreTodaysBehaviourWithSafeBudgets) {
  auto vm = ParseVmSpec(kVm, VmOptions{});
  ASSERT_TRUE(vm.ok()) << vm.error().ToString();
  EXPECT_EQ(vm->budget, vsock::VmBudget{});
  EXPECT_EQ(vm->policy, vsock::AccessPolicy{});
  EXPECT_FALSE(vm->max_host_fds_explicit);
  EXPECT_TRUE(vm->policy.AllowsHostPort(1));
  EXPECT_TRUE(vm->policy.AllowsSibling(4, 1));
}

TEST(LimitKeysTest, VmSpecSetsEveryKey) {
  auto vm = ParseVmSpec(std::string(kVm) +
                            ",max-connections=100,max_buffered_bytes=8M,max-host-fds=200,"
                            "connect-rate=0,connect-burst=10,allow-host-ports=22+1024-2047,"
                            "allow-guest-ports=none,allow-siblings=4:1000-2000;*:22",
                        VmOptions{});
  ASSERT_TRUE(vm.ok()) << vm.error().ToString();
  EXPECT_EQ(vm->budget.max_connections, 100u);
  EXPECT_EQ(vm->budget.max_buffered_bytes, 8u << 20);
  EXPECT_EQ(vm->budget.max_host_fds, 200u);
  EXPECT_TRUE(vm->max_host_fds_explicit);
  EXPECT_EQ(vm->budget.connect_rate, 0u);
  EXPECT_EQ(vm->budget.connect_burst, 10u);
  EXPECT_EQ(vm->policy.host_ports.ToString(), "22,1024-2047");
  EXPECT_TRUE(vm->policy.guest_ports.is_none());
  ASSERT_EQ(vm->policy.siblings.size(), 2u);
  EXPECT_TRUE(vm->policy.AllowsSibling(4, 1500));
  EXPECT_TRUE(vm->policy.AllowsSibling(9, 22));
  EXPECT_FALSE(vm->policy.AllowsSibling(9, 23));
}

TEST(LimitKeysTest, SizesTakeBinarySuffixes) {
  EXPECT_EQ(*ParseSize("k", "65536"), 65536u);
  EXPECT_EQ(*ParseSize("k", "64K"), 65536u);
  EXPECT_EQ(*ParseSize("k", "3MiB"), 3u << 20);
  EXPECT_EQ(*ParseSize("k", "2G"), 2ull << 30);
  for (const char* bad : {"", "M", "1.5M", "12T", "-1", "1 M", "99999999999999999999"}) {
    EXPECT_FALSE(ParseSize("k", bad).ok()) << bad;
  }
}

TEST(LimitKeysTest, BadValuesNameTheKey) {
  struct Case {
    const char* item;
    const char* expect;
  };
  for (const Case& c :
       {Case{"max-connections=0", "max-connections"},
        Case{"max-connections=lots", "max-connections"},
        Case{"max-buffered-bytes=1K", "max-buffered-bytes"},
        Case{"max-host-fds=99999999999", "max-host-fds"}, Case{"connect-burst=0", "connect-burst"},
        Case{"allow-host-ports=22+x", "allow-host-ports"},
        Case{"allow-guest-ports=", "allow-guest-ports"},
        Case{"allow-siblings=2:22", "allow-siblings"}}) {
    auto vm = ParseVmSpec(std::string(kVm) + "," + c.item, VmOptions{});
    ASSERT_FALSE(vm.ok()) << c.item;
    EXPECT_NE(vm.error().context.find(c.expect), std::string::npos)
        << c.item << ": " << vm.error().context;
  }
}

TEST(LimitKeysTest, GlobalFlagsAreEveryVmsDefaults) {
  const std::string second =
      "guest-cid=4,socket=/run/vm4.sock,uds-path=/run/vm4.vsock,max-connections=70";
  ParseOutcome out = Parse({"--max-connections", "50", "--allow-host-ports", "22,80", "--vm",
                            std::string(kVm), "--vm", second});
  ASSERT_TRUE(out.run) << out.output;
  ASSERT_EQ(out.options.vms.size(), 2u);
  EXPECT_EQ(out.options.vms[0].budget.max_connections, 50u);
  EXPECT_EQ(out.options.vms[1].budget.max_connections, 70u);
  EXPECT_EQ(out.options.vms[1].policy.host_ports.ToString(), "22,80");

  ParseOutcome single = Parse({"--socket", "/run/a.sock", "--uds-path", "/run/a.vsock",
                               "--connect-rate", "0", "--allow-guest-ports", "1024-2047"});
  ASSERT_TRUE(single.run) << single.output;
  EXPECT_EQ(single.options.vms.at(0).budget.connect_rate, 0u);
  EXPECT_TRUE(single.options.vms.at(0).policy.AllowsGuestPort(1024));
  EXPECT_FALSE(single.options.vms.at(0).policy.AllowsGuestPort(22));

  ParseOutcome bad = Parse(
      {"--socket", "/run/a.sock", "--uds-path", "/run/a.vsock", "--max-buffered-bytes", "lots"});
  EXPECT_FALSE(bad.run);
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.output.find("--max-buffered-bytes"), std::string::npos) << bad.output;
}

TEST(LimitKeysTest, YamlListsMapsAndDefaults) {
  const char* yaml = R"(defaults:
  max-connections: 64
  allow-host-ports: [22, "1024-2047"]
vms:
  - guest_cid: 3
    socket: /run/vm3.sock
    uds_path: /run/vm3.vsock
    max-buffered-bytes: 16M
    allow-siblings:
      - {cid: 4, ports: [5000, "6000-6010"]}
      - "*:22"
  - guest_cid: 4
    socket: /run/vm4.sock
    uds_path: /run/vm4.vsock
    max-connections: 8
    allow-guest-ports: []
)";
  auto vms = ParseConfigYaml(yaml, VmOptions{}, "test.yaml");
  ASSERT_TRUE(vms.ok()) << vms.error().ToString();
  ASSERT_EQ(vms->size(), 2u);
  const VmOptions& a = (*vms)[0];
  EXPECT_EQ(a.budget.max_connections, 64u);
  EXPECT_EQ(a.budget.max_buffered_bytes, 16u << 20);
  EXPECT_EQ(a.policy.host_ports.ToString(), "22,1024-2047");
  EXPECT_TRUE(a.policy.AllowsSibling(4, 6005));
  EXPECT_FALSE(a.policy.AllowsSibling(4, 6011));
  EXPECT_TRUE(a.policy.AllowsSibling(7, 22));
  const VmOptions& b = (*vms)[1];
  EXPECT_EQ(b.budget.max_connections, 8u);
  EXPECT_EQ(b.policy.host_ports.ToString(), "22,1024-2047");
  EXPECT_TRUE(b.policy.guest_ports.is_none());
}

TEST(LimitKeysTest, YamlErrorsNameTheKeyAndLine) {
  struct Case {
    const char* yaml;
    const char* key;
    const char* line;
  };
  for (const Case& c : {
           Case{"vms:\n  - guest_cid: 3\n    socket: /a\n    uds_path: /b\n"
                "    max-connections: -5\n",
                "max-connections", "line 5"},
           Case{"vms:\n  - guest_cid: 3\n    socket: /a\n    uds_path: /b\n"
                "    allow-host-ports: [22, eighty]\n",
                "eighty", "line 5"},
           Case{"defaults:\n  max-buffered-bytes: 1Q\nvms:\n  - guest_cid: 3\n    socket: /a\n"
                "    uds_path: /b\n",
                "max-buffered-bytes", "line 2"},
           Case{"defaults:\n  socket: /x\nvms:\n  - guest_cid: 3\n    socket: /a\n"
                "    uds_path: /b\n",
                "socket", "line 2"},
           Case{"vms:\n  - guest_cid: 3\n    socket: /a\n    uds_path: /b\n"
                "    allow-siblings:\n      - {cid: 2, ports: 22}\n",
                "allow-siblings", "line 5"},
           Case{"vms:\n  - guest_cid: 3\n    socket: /a\n    uds_path: /b\n"
                "    max-host-fds: {a: 1}\n",
                "max-host-fds", "line 5"},
       }) {
    auto vms = ParseConfigYaml(c.yaml, VmOptions{}, "bad.yaml");
    ASSERT_FALSE(vms.ok()) << c.yaml;
    const std::string& msg = vms.error().context;
    EXPECT_NE(msg.find("bad.yaml"), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.key), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.line), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace vsockd::daemon
