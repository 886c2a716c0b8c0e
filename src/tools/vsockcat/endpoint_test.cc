// vsockcat's address words: libvsock's forms plus socat-style TCP / listen / connect words.
#include "tools/vsockcat/endpoint.h"

#include <gtest/gtest.h>

namespace vsockd::vsockcat {
namespace {

TEST(EndpointTest, LibvsockForms) {
  auto e = ParseEndpoint("hvsock:///run/x.vsock:5000", false);
  ASSERT_TRUE(e.ok()) << e.error().context;
  EXPECT_FALSE(e->is_tcp());
  EXPECT_TRUE(e->address.is_hybrid());
  EXPECT_EQ(e->address.path(), "/run/x.vsock");
  EXPECT_EQ(e->address.port(), 5000u);
  e = ParseEndpoint("vsock://3:1024", false);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->address, vsock::Address::vsock(3, 1024));
  e = ParseEndpoint("5000", true);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->address, vsock::Address::vsock(vsock::cid_any, 5000));
  // A bare port is for listening only.
  EXPECT_FALSE(ParseEndpoint("5000", false).ok());
  e = ParseEndpoint("unix:/run/a b", false);
  EXPECT_FALSE(e.ok());
  e = ParseEndpoint("unix:/run/s", false);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->address, vsock::Address::unix_socket("/run/s"));
}

TEST(EndpointTest, SocatWords) {
  auto e = ParseEndpoint("VSOCK-LISTEN:1234", false);
  ASSERT_TRUE(e.ok()) << e.error().context;
  EXPECT_EQ(e->role, Endpoint::Role::kListen);
  EXPECT_EQ(e->address, vsock::Address::vsock(vsock::cid_any, 1234));
  e = ParseEndpoint("vsock-connect:2:80", false);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->role, Endpoint::Role::kConnect);
  EXPECT_EQ(e->address, vsock::Address::vsock(2, 80));
  e = ParseEndpoint("unix-listen:/run/l", false);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->role, Endpoint::Role::kListen);
  EXPECT_EQ(e->address, vsock::Address::unix_socket("/run/l"));
  EXPECT_FALSE(ParseEndpoint("tcp-connect:h:1", true).ok());
}

TEST(EndpointTest, TcpWords) {
  auto e = ParseEndpoint("tcp:127.0.0.1:8080", false);
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->is_tcp());
  EXPECT_EQ(e->host, "127.0.0.1");
  EXPECT_EQ(e->port, 8080);
  EXPECT_EQ(e->ToString(), "tcp:127.0.0.1:8080");
  e = ParseEndpoint("tcp-listen:8080", false);  // the word says listen
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->role, Endpoint::Role::kListen);
  EXPECT_EQ(e->host, "");
  EXPECT_EQ(e->ToString(), "tcp:8080");
  e = ParseEndpoint("tcp:[::1]:99", false);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->host, "::1");
  EXPECT_EQ(e->ToString(), "tcp:[::1]:99");
  e = ParseEndpoint("tcp:0", true);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->port, 0);
  for (const char* bad : {"tcp:", "tcp:80", "tcp:h:0", "tcp:h:65536", "tcp:h:x", "tcp:::1:80",
                          "tcp:[::1]80", "tcp-l:", "vsock-listen:", ""}) {
    auto r = ParseEndpoint(bad, false);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.error().code, EINVAL) << bad;
    }
  }
}

TEST(EndpointTest, ExplainsRefusals) {
  auto e = ParseEndpoint("hvsock:///run/x:5000", false);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(ExplainConnectError(*e, vsock::errc::handshake_refused,
                                "connect to 'hvsock:///run/x:5000': refused by vsockd: "
                                "connection refused by guest port 5000"),
            "the guest refused the connection (no listener on port 5000)");
  EXPECT_NE(ExplainConnectError(*e, std::make_error_code(std::errc::no_such_file_or_directory), "")
                .find("no vsockd hybrid socket at /run/x"),
            std::string::npos);
}

}  // namespace
}  // namespace vsockd::vsockcat
