#include "base/unix_socket.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>

#include <cstdlib>
#include <filesystem>

namespace vsockd {
namespace {

std::string TempSocketPath(const char* name) {
  char tmpl[] = "/tmp/vsockd-test-XXXXXX";
  const char* dir = ::mkdtemp(tmpl);
  return std::string(dir) + "/" + name;
}

TEST(UnixSocketTest, ListenConnectAndPassFds) {
  std::string path = TempSocketPath("s.sock");
  auto listener = ListenUnix(path, 4, /*nonblocking=*/false);
  ASSERT_TRUE(listener.ok()) << listener.error().ToString();
  auto client = ConnectUnix(path);
  ASSERT_TRUE(client.ok()) << client.error().ToString();
  Fd server(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(server.valid());

  int efd = ::eventfd(5, EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  int fds[] = {efd};
  ASSERT_TRUE(SendWithFds(client->get(), "hi", 2, fds).ok());
  ::close(efd);

  char buf[8];
  std::vector<Fd> got;
  auto n = RecvWithFds(server.get(), buf, sizeof buf, &got);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 2u);
  ASSERT_EQ(got.size(), 1u);
  uint64_t v = 0;
  ASSERT_EQ(::read(got[0].get(), &v, sizeof v), 8);
  EXPECT_EQ(v, 5u);  // the same eventfd came across
  std::filesystem::remove_all(std::filesystem::path(path).parent_path());
}

TEST(UnixSocketTest, RejectsTooManyFdsAndClosesThem) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  Fd a(sv[0]), b(sv[1]);
  int e = ::eventfd(0, EFD_CLOEXEC);
  int fds[4] = {e, e, e, e};
  ASSERT_TRUE(SendWithFds(a.get(), "x", 1, fds).ok());
  ::close(e);
  char c;
  std::vector<Fd> got;
  auto n = RecvWithFds(b.get(), &c, 1, &got, /*max_fds=*/2);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().code, EBADMSG);
}

TEST(UnixSocketTest, PathTooLongIsAClearError) {
  sockaddr_un addr;
  auto r = MakeUnixAddress(std::string(200, 'a'), &addr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ENAMETOOLONG);
}

TEST(UnixSocketTest, RefusesToReplaceANonSocket) {
  std::string path = TempSocketPath("plain");
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  auto r = ListenUnix(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, EEXIST);
  std::filesystem::remove_all(std::filesystem::path(path).parent_path());
}

}  // namespace
}  // namespace vsockd
