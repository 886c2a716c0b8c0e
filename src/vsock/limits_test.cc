#include "vsock/limits.h"

#include <gtest/gtest.h>

namespace vsockd::vsock {
namespace {

TEST(PortSetTest, DefaultAllowsEveryPort) {
  PortSet set;
  EXPECT_TRUE(set.is_any());
  EXPECT_TRUE(set.Contains(0));
  EXPECT_TRUE(set.Contains(UINT32_MAX));
  EXPECT_EQ(set.ToString(), "any");
}

TEST(PortSetTest, NoneAllowsNothing) {
  auto set = PortSet::Parse("none");
  ASSERT_TRUE(set.ok());
  EXPECT_TRUE(set->is_none());
  EXPECT_FALSE(set->Contains(22));
  EXPECT_EQ(set->ToString(), "none");
}

TEST(PortSetTest, ParsesPortsAndRangesWithEitherSeparator) {
  auto set = PortSet::Parse(" 22, 1024-2047+5000 ");
  ASSERT_TRUE(set.ok()) << set.error().ToString();
  EXPECT_TRUE(set->Contains(22));
  EXPECT_FALSE(set->Contains(23));
  EXPECT_FALSE(set->Contains(1023));
  EXPECT_TRUE(set->Contains(1024));
  EXPECT_TRUE(set->Contains(2047));
  EXPECT_FALSE(set->Contains(2048));
  EXPECT_TRUE(set->Contains(5000));
  EXPECT_EQ(set->ToString(), "22,1024-2047,5000");
}

TEST(PortSetTest, MergesOverlappingAndAdjacentRanges) {
  auto set = PortSet::Parse("10-20,15-30,31,4294967295,4294967294");
  ASSERT_TRUE(set.ok());
  EXPECT_EQ(set->ToString(), "10-31,4294967294-4294967295");
  EXPECT_TRUE(set->Contains(UINT32_MAX));
  auto again = PortSet::Parse(set->ToString());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *set);
}

TEST(PortSetTest, RejectsBadItemsNamingThem) {
  for (const char* bad :
       {"", "22,,23", "abc", "-5", "5-", "20-10", "4294967296", "1-2-3", "0x10"}) {
    auto set = PortSet::Parse(bad);
    EXPECT_FALSE(set.ok()) << "accepted '" << bad << "'";
    if (!set.ok()) {
      EXPECT_EQ(set.error().code, EINVAL);
    }
  }
  auto set = PortSet::Parse("22,eighty");
  ASSERT_FALSE(set.ok());
  EXPECT_NE(set.error().context.find("eighty"), std::string::npos) << set.error().context;
}

TEST(SiblingRuleTest, ParsesCidAndPorts) {
  auto rule = SiblingRule::Parse("4:1000-2000+3000");
  ASSERT_TRUE(rule.ok()) << rule.error().ToString();
  EXPECT_EQ(rule->cid, 4u);
  EXPECT_TRUE(rule->ports.Contains(1500));
  EXPECT_FALSE(rule->ports.Contains(2500));
  EXPECT_EQ(rule->ToString(), "4:1000-2000,3000");

  auto any = SiblingRule::Parse("*:22");
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(any->cid, SiblingRule::kAnyCid);
  auto whole = SiblingRule::Parse("7");
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->cid, 7u);
  EXPECT_TRUE(whole->ports.is_any());
}

TEST(SiblingRuleTest, RejectsReservedCids) {
  for (const char* bad : {"0:1", "1:1", "2:1", "4294967295:1", "x:1", ":1", "5:"}) {
    EXPECT_FALSE(SiblingRule::Parse(bad).ok()) << "accepted '" << bad << "'";
  }
}

TEST(AccessPolicyTest, DefaultAllowsEverything) {
  AccessPolicy policy;
  EXPECT_TRUE(policy.AllowsHostPort(22));
  EXPECT_TRUE(policy.AllowsGuestPort(1024));
  EXPECT_TRUE(policy.AllowsSibling(4, 5000));
}

TEST(AccessPolicyTest, SiblingRulesMatchCidAndPort) {
  AccessPolicy policy;
  policy.siblings = {*SiblingRule::Parse("4:1000-2000"), *SiblingRule::Parse("*:22")};
  EXPECT_TRUE(policy.AllowsSibling(4, 1500));
  EXPECT_FALSE(policy.AllowsSibling(4, 2500));
  EXPECT_FALSE(policy.AllowsSibling(5, 1500));
  EXPECT_TRUE(policy.AllowsSibling(5, 22));
  policy.siblings.clear();
  EXPECT_FALSE(policy.AllowsSibling(4, 1500));
}

}  // namespace
}  // namespace vsockd::vsock
