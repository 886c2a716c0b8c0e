#include "daemon/fd_budget.h"

#include <gtest/gtest.h>

#include <vector>

namespace vsockd::daemon {
namespace {

std::vector<VmOptions> Vms(size_t n) {
  std::vector<VmOptions> vms(n);
  for (size_t i = 0; i < n; ++i) vms[i].guest_cid = 3 + i;
  return vms;
}

TEST(FdBudgetTest, ImplicitBudgetsShareWhatIsLeft) {
  auto vms = Vms(4);
  // 1024 - 64 - 4 * 32 = 832 left, 208 each: below the 4096 default.
  auto plan = PlanFdBudgets(1024, &vms);
  ASSERT_TRUE(plan.ok()) << plan.error().ToString();
  EXPECT_EQ(plan->share, 208u);
  uint64_t total = plan->reserved;
  for (const auto& vm : vms) {
    EXPECT_EQ(vm.budget.max_host_fds, 208u);
    total += vm.budget.max_host_fds;
  }
  EXPECT_LE(total, 1024u);
}

TEST(FdBudgetTest, LargeLimitKeepsTheDefault) {
  auto vms = Vms(64);
  auto plan = PlanFdBudgets(1u << 20, &vms);
  ASSERT_TRUE(plan.ok());
  for (const auto& vm : vms) EXPECT_EQ(vm.budget.max_host_fds, vsock::VmBudget{}.max_host_fds);
}

TEST(FdBudgetTest, ExplicitBudgetsComeFirst) {
  auto vms = Vms(3);
  vms[0].budget.max_host_fds = 500;
  vms[0].max_host_fds_explicit = true;
  // 1024 - 64 - 96 - 500 = 364 for two: 182 each.
  auto plan = PlanFdBudgets(1024, &vms);
  ASSERT_TRUE(plan.ok()) << plan.error().ToString();
  EXPECT_EQ(vms[0].budget.max_host_fds, 500u);
  EXPECT_EQ(vms[1].budget.max_host_fds, 182u);
  EXPECT_EQ(vms[2].budget.max_host_fds, 182u);
}

TEST(FdBudgetTest, BudgetsThatCannotFitAreRefusedWithTheFigures) {
  auto vms = Vms(2);
  vms[0].budget.max_host_fds = 1000;
  vms[0].max_host_fds_explicit = true;
  auto plan = PlanFdBudgets(1024, &vms);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.error().code, EMFILE);
  EXPECT_NE(plan.error().context.find("1024"), std::string::npos) << plan.error().context;
  EXPECT_NE(plan.error().context.find("LimitNOFILE"), std::string::npos);

  auto many = Vms(100);  // 64 + 3200 reserved alone exceed 1024
  EXPECT_FALSE(PlanFdBudgets(1024, &many).ok());
}

}  // namespace
}  // namespace vsockd::daemon
