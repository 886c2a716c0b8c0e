#include "vsock/limits.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

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

// AddRange splices each range into the sorted list: checked against a model (one bit per
// port) over random ranges of a small port window, shifted to each end of the port space so
// the merges at 0 and at UINT32_MAX (where last + 1 overflows 32 bits) are covered.
TEST(PortSetTest, AddRangeMatchesAPortByPortModel) {
  constexpr uint32_t kWindow = 96;
  std::mt19937 rng(12);
  for (uint32_t base : {0u, 1000u, UINT32_MAX - kWindow + 1}) {
    for (int round = 0; round < 200; ++round) {
      std::vector<bool> model(kWindow, false);
      PortSet set = PortSet::None();
      int items = 1 + static_cast<int>(rng() % 12);
      for (int i = 0; i < items; ++i) {
        uint32_t a = rng() % kWindow;
        uint32_t b = rng() % 4 == 0 ? a : static_cast<uint32_t>(rng() % kWindow);
        set.AddRange(base + a, base + b);  // either order: AddRange swaps
        for (uint32_t p = std::min(a, b); p <= std::max(a, b); ++p) model[p] = true;
      }
      for (uint32_t p = 0; p < kWindow; ++p) {
        ASSERT_EQ(set.Contains(base + p), model[p])
            << "port " << base + p << " of " << set.ToString();
      }
      const auto& r = set.ranges();
      for (size_t i = 1; i < r.size(); ++i) {
        // Sorted, disjoint and not adjacent (adjacent ranges are merged).
        ASSERT_GT(static_cast<uint64_t>(r[i].first), static_cast<uint64_t>(r[i - 1].last) + 1)
            << set.ToString();
      }
    }
  }
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
