// vsock::errc: its category, messages and std::errc equivalents.
#include "vsock/error.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <system_error>

namespace vsock {
namespace {

TEST(ErrorTest, CategoryAndMessages) {
  std::error_code ec = errc::handshake_refused;
  EXPECT_EQ(&ec.category(), &error_category());
  EXPECT_STREQ(ec.category().name(), "vsock");
  EXPECT_NE(ec.message().find("refused"), std::string::npos) << ec.message();
  EXPECT_NE(make_error_code(errc::handshake_timeout).message().find("in time"), std::string::npos);
  EXPECT_NE(make_error_code(errc::bad_handshake_reply).message().find("malformed"),
            std::string::npos);
  EXPECT_NE(make_error_code(errc::invalid_address).message().find("address"), std::string::npos);
  EXPECT_NE(std::error_code(99, error_category()).message().find("99"), std::string::npos);
  EXPECT_TRUE(ec);  // non-zero values only
}

TEST(ErrorTest, PortableConditions) {
  std::error_code refused = errc::handshake_refused;
  EXPECT_EQ(refused, std::errc::connection_refused);
  EXPECT_NE(refused, std::errc::timed_out);
  EXPECT_EQ(std::error_code(errc::handshake_timeout), std::errc::timed_out);
  EXPECT_EQ(std::error_code(errc::bad_handshake_reply), std::errc::protocol_error);
  EXPECT_EQ(std::error_code(errc::invalid_address), std::errc::invalid_argument);
  // The same condition matches a kernel refusal, so callers need one check.
  std::error_code kernel(ECONNREFUSED, std::system_category());
  EXPECT_EQ(kernel, std::errc::connection_refused);
  // Codes stay distinct from each other and from system codes.
  EXPECT_NE(refused, kernel);
  EXPECT_EQ(refused, errc::handshake_refused);
  EXPECT_NE(refused, errc::handshake_timeout);
}

}  // namespace
}  // namespace vsock
