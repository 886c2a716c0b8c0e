#include "base/event_loop.h"

#include <gtest/gtest.h>

#include <thread>

#include "base/event_fd.h"

namespace vsockd {
namespace {

TEST(EventLoopTest, DispatchesFdEventsAndDeferredWorkAfterBatch) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  auto efd = EventFd::Create();
  ASSERT_TRUE(efd.ok());
  std::vector<std::string> order;
  ASSERT_TRUE((*loop)
                  ->Add(efd->get(), EPOLLIN,
                        [&](uint32_t) {
                          efd->Drain();
                          order.push_back("event");
                          (*loop)->Defer([&] { order.push_back("deferred"); });
                        })
                  .ok());
  efd->Signal();
  (*loop)->RunOnce(1000);
  EXPECT_EQ(order, (std::vector<std::string>{"event", "deferred"}));
}

TEST(EventLoopTest, RemoveInsideHandlerDropsPendingEvents) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  auto a = EventFd::Create();
  auto b = EventFd::Create();
  ASSERT_TRUE(a.ok() && b.ok());
  int calls = 0;
  // Whichever runs first removes both; the other must not run.
  auto handler = [&](uint32_t) {
    ++calls;
    (*loop)->Remove(a->get());
    (*loop)->Remove(b->get());
  };
  ASSERT_TRUE((*loop)->Add(a->get(), EPOLLIN, handler).ok());
  ASSERT_TRUE((*loop)->Add(b->get(), EPOLLIN, handler).ok());
  a->Signal();
  b->Signal();
  (*loop)->RunOnce(1000);
  EXPECT_EQ(calls, 1);
}

TEST(EventLoopTest, TimersFireInOrderAndCancelWorks) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  std::vector<int> fired;
  (*loop)->AddTimer(std::chrono::milliseconds(20), [&] { fired.push_back(2); });
  (*loop)->AddTimer(std::chrono::milliseconds(5), [&] { fired.push_back(1); });
  auto cancelled = (*loop)->AddTimer(std::chrono::milliseconds(10), [&] { fired.push_back(9); });
  (*loop)->CancelTimer(cancelled);
  (*loop)->AddTimer(std::chrono::milliseconds(30), [&] { (*loop)->Stop(); });
  (*loop)->Run();
  EXPECT_EQ(fired, (std::vector<int>{1, 2}));
}

TEST(EventLoopTest, StopFromAnotherThread) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    (*loop)->Stop();
  });
  (*loop)->Run();  // returns only because of Stop()
  t.join();
  EXPECT_TRUE((*loop)->stopped());
}

}  // namespace
}  // namespace vsockd

namespace vsockd {
namespace {

TEST(EventLoopTest, PostRunsOnLoopThread) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  std::thread::id ran_on;
  std::thread t([&] {
    (*loop)->Post([&] {
      ran_on = std::this_thread::get_id();
      (*loop)->Stop();
    });
  });
  (*loop)->Run();
  t.join();
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

}  // namespace
}  // namespace vsockd
