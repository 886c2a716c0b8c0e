// vsock::Address: every text form, round trips, parse errors, sockaddr conversion (built
// and checked without ever creating a socket).
#include "vsock/address.h"

#include <gtest/gtest.h>
#include <linux/vm_sockets.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>

#include "vsock/error.h"

namespace vsock {
namespace {

Address Parse(std::string_view text) {
  std::error_code ec;
  std::string why;
  auto a = Address::parse(text, ec, &why);
  EXPECT_TRUE(a.has_value()) << text << ": " << why;
  EXPECT_FALSE(ec) << text;
  return a.value_or(Address::unix_socket("<parse failed>"));
}

std::string ParseError(std::string_view text) {
  std::error_code ec;
  std::string why;
  auto a = Address::parse(text, ec, &why);
  EXPECT_FALSE(a.has_value()) << text << " parsed as " << a->to_string();
  EXPECT_EQ(ec, errc::invalid_address) << text;
  EXPECT_EQ(ec, std::errc::invalid_argument) << text;
  return why;
}

TEST(AddressTest, KataVsockForm) {
  EXPECT_EQ(Parse("vsock://3:1024"), Address::vsock(3, 1024));
  EXPECT_EQ(Parse("vsock://2:0"), Address::vsock(2, 0));
  EXPECT_EQ(Parse("vsock://4294967294:4294967294"), Address::vsock(4294967294u, 4294967294u));
  EXPECT_EQ(Parse("VSOCK://3:1024"), Address::vsock(3, 1024));
}

TEST(AddressTest, CidAndPortNames) {
  EXPECT_EQ(Parse("vsock://host:1024"), Address::vsock(cid_host, 1024));
  EXPECT_EQ(Parse("vsock://local:7"), Address::vsock(cid_local, 7));
  EXPECT_EQ(Parse("vsock://hypervisor:7"), Address::vsock(cid_hypervisor, 7));
  EXPECT_EQ(Parse("vsock://any:5000"), Address::vsock(cid_any, 5000));
  EXPECT_EQ(Parse("vsock://ANY:any"), Address::vsock(cid_any, port_any));
  EXPECT_EQ(Parse("vsock://Host:1"), Address::vsock(2, 1));
  EXPECT_EQ(cid_any, 0xFFFFFFFFu);
  EXPECT_EQ(cid_any, VMADDR_CID_ANY);
  EXPECT_EQ(port_any, VMADDR_PORT_ANY);
  EXPECT_EQ(cid_host, static_cast<uint32_t>(VMADDR_CID_HOST));
}

TEST(AddressTest, ShortForms) {
  EXPECT_EQ(Parse("3:1024"), Address::vsock(3, 1024));
  EXPECT_EQ(Parse("host:1024"), Address::vsock(2, 1024));
  EXPECT_EQ(Parse("any:any"), Address::vsock(cid_any, port_any));
  EXPECT_EQ(Parse("5000"), Address::vsock(cid_any, 5000));
  EXPECT_EQ(Parse("any"), Address::vsock(cid_any, port_any));
  EXPECT_EQ(Parse("vsock:2:1234"), Address::vsock(2, 1234));  // systemd's form
}

TEST(AddressTest, HybridForm) {
  Address a = Parse("hvsock:///run/vsockd/vm3.vsock:1024");
  EXPECT_TRUE(a.is_hybrid());
  EXPECT_EQ(a.path(), "/run/vsockd/vm3.vsock");
  EXPECT_EQ(a.port(), 1024u);
  EXPECT_EQ(a.hybrid_listen_path(), "/run/vsockd/vm3.vsock_1024");
  // The port follows the last ':'; the path may hold more.
  Address b = Parse("hvsock://./a:b:c.sock:5");
  EXPECT_EQ(b.path(), "./a:b:c.sock");
  EXPECT_EQ(b.port(), 5u);
  EXPECT_EQ(Parse("hvsock://rel.sock:4294967295").port(), 4294967295u);
}

TEST(AddressTest, UnixForm) {
  EXPECT_EQ(Parse("unix:/tmp/x.sock"), Address::unix_socket("/tmp/x.sock"));
  EXPECT_EQ(Parse("unix:///tmp/x.sock"), Address::unix_socket("/tmp/x.sock"));
  EXPECT_EQ(Parse("unix:rel:with:colons"), Address::unix_socket("rel:with:colons"));
  EXPECT_EQ(Parse("unix:@abstract"), Address::unix_socket("@abstract"));
}

TEST(AddressTest, ToStringIsCanonicalAndRoundTrips) {
  EXPECT_EQ(Address::vsock(3, 1024).to_string(), "vsock://3:1024");
  EXPECT_EQ(Address::vsock(2, 1024).to_string(), "vsock://2:1024");
  EXPECT_EQ(Address::vsock(cid_any, port_any).to_string(), "vsock://any:any");
  EXPECT_EQ(Address().to_string(), "vsock://any:any");
  EXPECT_EQ(Address::hybrid("/a:b", 9).to_string(), "hvsock:///a:b:9");
  EXPECT_EQ(Address::unix_socket("/x").to_string(), "unix:/x");
  for (const Address& a :
       {Address::vsock(0, 0), Address::vsock(1, 1), Address::vsock(3, 4294967294u),
        Address::vsock(cid_any, 80), Address::vsock(7, port_any), Address::hybrid("/p", 0),
        Address::hybrid("rel:x", 4294967295u), Address::hybrid("/with_underscore_1", 2),
        Address::unix_socket("/tmp/s"), Address::unix_socket("//double"),
        Address::unix_socket("rel"), Address::unix_socket("@abs")}) {
    std::error_code ec;
    auto back = Address::parse(a.to_string(), ec);
    ASSERT_TRUE(back.has_value()) << a.to_string();
    EXPECT_EQ(*back, a) << a.to_string() << " -> " << back->to_string();
  }
  for (const char* text : {"3:1024", "host:5", "5000", "vsock:2:1", "unix:///x", "HVSOCK://p:1"}) {
    Address a = Parse(text);
    EXPECT_EQ(Parse(a.to_string()), a) << text;
  }
}

TEST(AddressTest, ErrorsSayWhatIsWrong) {
  EXPECT_EQ(ParseError("vsock://3:abc"),
            "vsock address 'vsock://3:abc': port 'abc' is not a number 0..4294967295 (or 'any')");
  EXPECT_NE(ParseError("vsock://3:4294967296").find("port '4294967296' is not a number"),
            std::string::npos);
  EXPECT_NE(ParseError("vsock://x:1").find("CID 'x' is not a number"), std::string::npos);
  EXPECT_NE(ParseError("vsock://:1").find("the CID is missing"), std::string::npos);
  EXPECT_NE(ParseError("vsock://3:").find("the port is missing"), std::string::npos);
  EXPECT_NE(ParseError("vsock://3").find("expected vsock://CID:PORT"), std::string::npos);
  EXPECT_NE(ParseError("vsock://1:2:3").find("expected vsock://CID:PORT"), std::string::npos);
  EXPECT_NE(ParseError("vsock://-1:2").find("CID '-1'"), std::string::npos);
  EXPECT_NE(ParseError("vsock://+3:2").find("CID '+3'"), std::string::npos);
  EXPECT_NE(ParseError("vsock://0x3:2").find("CID '0x3'"), std::string::npos);
  EXPECT_NE(ParseError("hvsock:///p:any").find("port 'any' is not a number 0..4294967295"),
            std::string::npos);
  EXPECT_NE(ParseError("hvsock:///p").find("expected hvsock://PATH:PORT"), std::string::npos);
  EXPECT_NE(ParseError("hvsock://:5").find("the path is empty"), std::string::npos);
  EXPECT_NE(ParseError("unix:").find("the path is empty"), std::string::npos);
  EXPECT_NE(ParseError("").find("empty address"), std::string::npos);
  EXPECT_NE(ParseError("3: 1024").find("blanks"), std::string::npos);
  EXPECT_NE(ParseError("tcp://1.2.3.4:5").find("unknown scheme"), std::string::npos);
  EXPECT_NE(ParseError("hello").find("expected vsock://CID:PORT"), std::string::npos);
  EXPECT_NE(ParseError("99999999999").find("port '99999999999' is not a number"),
            std::string::npos);
  EXPECT_NE(ParseError(std::string_view("unix:/a\0b", 9)).find("NUL"), std::string::npos);
  // Junk from the user is quoted safely.
  EXPECT_NE(ParseError("vsock://3:\x01\x7f").find("port '?\?'"), std::string::npos);
}

TEST(AddressTest, ParseWithoutWhyStillSetsTheCode) {
  std::error_code ec;
  EXPECT_FALSE(Address::parse("nope", ec));
  EXPECT_EQ(ec, errc::invalid_address);
  EXPECT_TRUE(Address::parse("3:4", ec));
  EXPECT_FALSE(ec);
}

TEST(AddressTest, SockaddrVm) {
  sockaddr_storage ss;
  std::error_code ec;
  socklen_t len = Address::vsock(3, 1024).to_sockaddr(ss, ec);
  ASSERT_FALSE(ec);
  ASSERT_EQ(len, sizeof(sockaddr_vm));
  const auto* vm = reinterpret_cast<const sockaddr_vm*>(&ss);
  EXPECT_EQ(vm->svm_family, AF_VSOCK);
  EXPECT_EQ(vm->svm_cid, 3u);
  EXPECT_EQ(vm->svm_port, 1024u);
  EXPECT_EQ(vm->svm_reserved1, 0);
  for (unsigned char z : vm->svm_zero) EXPECT_EQ(z, 0);
  auto back = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len, ec);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, Address::vsock(3, 1024));

  len = Address::vsock(cid_any, port_any).to_sockaddr(ss, ec);
  EXPECT_EQ(vm->svm_cid, VMADDR_CID_ANY);
  EXPECT_EQ(vm->svm_port, VMADDR_PORT_ANY);
  // Truncated addresses are refused.
  EXPECT_FALSE(Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len - 1, ec));
  EXPECT_EQ(ec, errc::invalid_address);
}

TEST(AddressTest, SockaddrUn) {
  sockaddr_storage ss;
  std::error_code ec;
  // A hybrid address connects to vsockd's socket itself.
  socklen_t len = Address::hybrid("/run/vm.sock", 5).to_sockaddr(ss, ec);
  ASSERT_FALSE(ec);
  const auto* un = reinterpret_cast<const sockaddr_un*>(&ss);
  EXPECT_EQ(un->sun_family, AF_UNIX);
  EXPECT_STREQ(un->sun_path, "/run/vm.sock");
  EXPECT_EQ(len, offsetof(sockaddr_un, sun_path) + 13);
  auto back = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len, ec);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, Address::unix_socket("/run/vm.sock"));

  len = Address::unix_socket("@abs").to_sockaddr(ss, ec);
  ASSERT_FALSE(ec);
  EXPECT_EQ(un->sun_path[0], '\0');
  EXPECT_EQ(std::memcmp(un->sun_path + 1, "abs", 3), 0);
  EXPECT_EQ(len, offsetof(sockaddr_un, sun_path) + 4);
  back = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len, ec);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, Address::unix_socket("@abs"));

  EXPECT_EQ(Address::unix_socket(std::string(108, 'x')).to_sockaddr(ss, ec), 0u);
  EXPECT_EQ(ec, std::errc::filename_too_long);
  EXPECT_NE(Address::unix_socket(std::string(107, 'x')).to_sockaddr(ss, ec), 0u);
  EXPECT_FALSE(ec);
  // Unnamed (an unbound client) and unknown families.
  EXPECT_FALSE(
      Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), sizeof(sa_family_t), ec));
  EXPECT_EQ(ec, errc::invalid_address);
  sockaddr_storage in{};
  in.ss_family = AF_INET;
  EXPECT_FALSE(Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&in), sizeof in, ec));
  EXPECT_EQ(ec, std::errc::address_family_not_supported);
}

}  // namespace
}  // namespace vsock
