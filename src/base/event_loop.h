// EventLoop: a single-threaded epoll loop with timers and end-of-batch hooks.
//
// Role: drives every component of the daemon and of vguest. Components register fds with a
// handler; handlers run on the loop's thread only, so components keep no locks.
//
// Batching: after the handlers of one epoll_wait batch have run, the loop runs the callbacks
// queued with Defer(). Device code uses that to flush once per batch (one writev per
// connection, one guest interrupt per queue) instead of once per event.
//
// Threading: everything except Stop() and Post() must be called on the loop's thread.
// Removing an fd (even the one whose handler is running) is safe from inside a handler;
// events already fetched for it are dropped.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "base/fd.h"
#include "base/result.h"

namespace vsockd {

class EventLoop {
 public:
  using Handler = std::function<void(uint32_t events)>;
  using Clock = std::chrono::steady_clock;
  using TimerId = uint64_t;

  static Result<std::unique_ptr<EventLoop>> Create();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // `events` are EPOLL* flags (EPOLLIN, EPOLLOUT, EPOLLET, ...). The fd is not owned.
  Status Add(int fd, uint32_t events, Handler handler);
  Status Modify(int fd, uint32_t events);
  void Remove(int fd);

  // One-shot timer. Returns an id for CancelTimer (cancelling a fired timer is a no-op).
  TimerId AddTimer(std::chrono::milliseconds delay, std::function<void()> callback);
  void CancelTimer(TimerId id);

  // Runs `callback` once after the current batch of events (or at the next iteration).
  void Defer(std::function<void()> callback);

  // Thread-safe: runs `callback` on the loop thread soon (wakes the loop).
  void Post(std::function<void()> callback);

  // Runs until Stop(). Returns immediately if Stop() was called before.
  void Run();
  // One epoll_wait (timeout_ms < 0: wait for an event or timer) plus its handlers,
  // expired timers and deferred callbacks.
  void RunOnce(int timeout_ms);
  // Thread-safe and async-signal-safe: makes Run() return.
  void Stop();
  bool stopped() const;

 private:
  struct Entry {
    int fd;
    Handler handler;
  };
  EventLoop(Fd epoll, Fd wake);
  int NextTimeoutMs(int requested) const;
  void RunTimers();
  void RunDeferred();

  Fd epoll_;
  Fd wake_;  // eventfd for Stop()
  std::atomic<bool> stop_{false};
  uint64_t next_token_ = 1;
  std::unordered_map<uint64_t, std::shared_ptr<Entry>> entries_;  // token -> entry
  std::unordered_map<int, uint64_t> fd_tokens_;                   // fd -> token
  TimerId next_timer_ = 1;
  std::multimap<Clock::time_point, TimerId> timer_order_;
  std::unordered_map<TimerId, std::pair<Clock::time_point, std::function<void()>>> timers_;
  std::vector<std::function<void()>> deferred_;
  std::mutex posted_mu_;
  std::vector<std::function<void()>> posted_;  // guarded by posted_mu_
  std::vector<epoll_event> events_;
};

}  // namespace vsockd
