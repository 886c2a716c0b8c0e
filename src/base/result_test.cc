#include "base/result.h"

#include <gtest/gtest.h>

namespace vsockd {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return MakeError(EINVAL, "{} is odd", x);
  return x / 2;
}

Status Chain(int x) {
  VSOCKD_RETURN_IF_ERROR(Half(x));
  return OkStatus();
}

TEST(ResultTest, ValueAndError) {
  auto ok = Half(8);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 4);
  auto bad = Half(3);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, EINVAL);
  EXPECT_EQ(bad.error().context, "3 is odd");
  EXPECT_NE(bad.error().ToString().find("Invalid argument"), std::string::npos);
}

TEST(ResultTest, ReturnIfErrorPropagates) {
  EXPECT_TRUE(Chain(2).ok());
  Status s = Chain(5);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, EINVAL);
}

}  // namespace
}  // namespace vsockd
