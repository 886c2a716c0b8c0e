// vsock::Admission: policy and budget checks, the connect-rate bucket, and the credit rules
// that keep the advertised buf_allocs within max_buffered_bytes.
#include "vsock/admission.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "vsock/packet.h"

namespace vsockd::vsock {
namespace {

using Clock = Admission::Clock;

TEST(AdmissionTest, PolicyRefusesPortsAndSiblingsOutsideTheLists) {
  AccessPolicy policy;
  policy.host_ports = *PortSet::Parse("22,1024-2047");
  policy.guest_ports = *PortSet::Parse("5000");
  policy.siblings = {*SiblingRule::Parse("4:7000")};
  Admission a(VmBudget{}, policy, 65536);
  const auto now = Clock::now();
  EXPECT_EQ(a.AdmitFromGuest(VMADDR_CID_HOST, 22, {}, now), Refusal::kNone);
  EXPECT_EQ(a.AdmitFromGuest(VMADDR_CID_HOST, 80, {}, now), Refusal::kHostPort);
  EXPECT_EQ(a.AdmitFromGuest(4, 7000, {}, now), Refusal::kNone);
  EXPECT_EQ(a.AdmitFromGuest(4, 7001, {}, now), Refusal::kSibling);
  EXPECT_EQ(a.AdmitFromGuest(5, 7000, {}, now), Refusal::kSibling);
  EXPECT_EQ(a.AdmitToGuest(5000, false, {}, now), Refusal::kNone);
  EXPECT_EQ(a.AdmitToGuest(5001, false, {}, now), Refusal::kGuestPort);
  EXPECT_EQ(a.AdmitToGuest(5001, true, {}, now), Refusal::kNone) << "siblings: caller's policy";
  EXPECT_EQ(a.refused(Refusal::kHostPort), 1u);
  EXPECT_EQ(a.refused(Refusal::kSibling), 2u);
  EXPECT_EQ(a.refused(Refusal::kGuestPort), 1u);
}

TEST(AdmissionTest, BudgetsRefuseTheExcess) {
  VmBudget b;
  b.max_connections = 2;
  b.max_host_fds = 3;
  b.connect_rate = 0;
  Admission a(b, AccessPolicy{}, 65536);
  const auto now = Clock::now();
  EXPECT_EQ(a.AdmitFromGuest(2, 1, {1, 1}, now), Refusal::kNone);
  EXPECT_EQ(a.AdmitFromGuest(2, 1, {2, 2}, now), Refusal::kConnections);
  EXPECT_EQ(a.AdmitToGuest(1, false, {1, 3}, now), Refusal::kHostFds);
  EXPECT_EQ(a.refused(Refusal::kConnections), 1u);
  EXPECT_EQ(a.refused(Refusal::kHostFds), 1u);
}

TEST(AdmissionTest, ConnectRateIsATokenBucket) {
  VmBudget b;
  b.connect_rate = 10;
  b.connect_burst = 5;
  Admission a(b, AccessPolicy{}, 65536);
  auto t = Clock::now();
  int admitted = 0;
  for (int i = 0; i < 20; ++i) admitted += a.AdmitFromGuest(2, 1, {}, t) == Refusal::kNone;
  EXPECT_EQ(admitted, 5) << "the burst";
  EXPECT_EQ(a.refused(Refusal::kConnectRate), 15u);
  t += std::chrono::milliseconds(300);  // 3 tokens
  admitted = 0;
  for (int i = 0; i < 10; ++i) admitted += a.AdmitFromGuest(2, 1, {}, t) == Refusal::kNone;
  EXPECT_EQ(admitted, 3);
  t += std::chrono::hours(1);  // capped at the burst
  admitted = 0;
  for (int i = 0; i < 10; ++i) admitted += a.AdmitFromGuest(2, 1, {}, t) == Refusal::kNone;
  EXPECT_EQ(admitted, 5);
}

TEST(AdmissionTest, CreditStaysWithinTheBudgetAndKeepsAReservePerSlot) {
  VmBudget b;
  b.max_connections = 64;
  b.max_buffered_bytes = 1 << 20;  // 1 MiB for 64 slots of 256 KiB
  Admission a(b, AccessPolicy{}, 256 * 1024);
  std::vector<uint32_t> conns;
  for (int i = 0; i < 64; ++i) {
    conns.push_back(a.OpenBufAlloc(conns.size()));
    EXPECT_GE(conns.back(), kMinBufAlloc);
    EXPECT_LE(a.committed() + (64 - conns.size()) * kMinBufAlloc, b.max_buffered_bytes)
        << "after " << conns.size() << " connections";
  }
  EXPECT_EQ(conns[0], 256u * 1024) << "room: the configured size";
  EXPECT_EQ(conns[63], kMinBufAlloc) << "no room: the reserved minimum";
}

TEST(AdmissionTest, CreditIsNeverTakenBackFasterThanItIsReturned) {
  VmBudget b;
  b.max_connections = 4;
  b.max_buffered_bytes = 1 << 20;
  Admission a(b, AccessPolicy{}, 512 * 1024);
  uint32_t big = a.OpenBufAlloc(0);  // 512 KiB
  std::vector<uint32_t> small;
  for (int i = 1; i < 4; ++i) small.push_back(a.OpenBufAlloc(i));
  ASSERT_EQ(big, 512u * 1024);
  // Under pressure the big one is brought toward a fair share, but only by what each header
  // returns: the guest's view (buf_alloc - in flight) never goes below zero.
  uint32_t next = a.BufAlloc(big, /*returned=*/0, 4);
  EXPECT_EQ(next, big) << "nothing returned: nothing taken back";
  next = a.BufAlloc(next, /*returned=*/10000, 4);
  EXPECT_EQ(next, big - 10000u);
  for (int i = 0; i < 100; ++i) next = a.BufAlloc(next, 65536, 4);
  EXPECT_EQ(next, (b.max_buffered_bytes) / 4) << "the fair share";
  EXPECT_LE(a.committed(), b.max_buffered_bytes);
}

TEST(AdmissionTest, RandomOpensClosesAndHeadersKeepTheInvariant) {
  VmBudget b;
  b.max_connections = 32;
  b.max_buffered_bytes = 2 << 20;
  Admission a(b, AccessPolicy{}, 256 * 1024);
  std::mt19937 rng(7);
  std::vector<uint32_t> conns;
  for (int step = 0; step < 20000; ++step) {
    const int op = static_cast<int>(rng() % 3);
    if (op == 0 && conns.size() < b.max_connections) {
      conns.push_back(a.OpenBufAlloc(conns.size()));
    } else if (op == 1 && !conns.empty()) {
      size_t i = rng() % conns.size();
      a.Closed(conns[i]);
      conns.erase(conns.begin() + static_cast<long>(i));
    } else if (!conns.empty()) {
      size_t i = rng() % conns.size();
      const uint32_t returned = rng() % (conns[i] + 1);
      const uint32_t next = a.BufAlloc(conns[i], returned, conns.size());
      ASSERT_GE(uint64_t{next} + returned, conns[i]) << "credit taken back too fast";
      ASSERT_GE(next, kMinBufAlloc);
      conns[i] = next;
    }
    uint64_t sum = 0;
    for (uint32_t c : conns) sum += c;
    ASSERT_EQ(sum, a.committed());
    ASSERT_LE(sum + (b.max_connections - conns.size()) * kMinBufAlloc, b.max_buffered_bytes)
        << "step " << step;
  }
}

}  // namespace
}  // namespace vsockd::vsock
