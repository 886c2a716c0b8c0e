#include "base/event_loop.h"

#include <sys/eventfd.h>

#include <atomic>

#include "base/log.h"

namespace vsockd {
namespace {
constexpr uint64_t kWakeToken = 0;
}  // namespace

Result<std::unique_ptr<EventLoop>> EventLoop::Create() {
  Fd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) return ErrnoError("epoll_create1");
  Fd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return ErrnoError("eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeToken;
  if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, wake.get(), &ev) < 0) {
    return ErrnoError("epoll_ctl(wake)");
  }
  return std::unique_ptr<EventLoop>(new EventLoop(std::move(ep), std::move(wake)));
}

EventLoop::EventLoop(Fd epoll, Fd wake) : epoll_(std::move(epoll)), wake_(std::move(wake)) {
  events_.resize(256);
}

EventLoop::~EventLoop() = default;

Status EventLoop::Add(int fd, uint32_t events, Handler handler) {
  if (fd_tokens_.count(fd) != 0) return MakeError(EEXIST, "fd {} already in the event loop", fd);
  uint64_t token = next_token_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) < 0) {
    return ErrnoError("epoll_ctl(ADD, fd {})", fd);
  }
  entries_[token] = std::make_shared<Entry>(Entry{fd, std::move(handler)});
  fd_tokens_[fd] = token;
  return OkStatus();
}

Status EventLoop::Modify(int fd, uint32_t events) {
  auto it = fd_tokens_.find(fd);
  if (it == fd_tokens_.end()) return MakeError(ENOENT, "fd {} not in the event loop", fd);
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = it->second;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) < 0) {
    return ErrnoError("epoll_ctl(MOD, fd {})", fd);
  }
  return OkStatus();
}

void EventLoop::Remove(int fd) {
  auto it = fd_tokens_.find(fd);
  if (it == fd_tokens_.end()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  entries_.erase(it->second);
  fd_tokens_.erase(it);
}

EventLoop::TimerId EventLoop::AddTimer(std::chrono::milliseconds delay,
                                       std::function<void()> callback) {
  TimerId id = next_timer_++;
  auto when = Clock::now() + delay;
  timer_order_.emplace(when, id);
  timers_.emplace(id, std::make_pair(when, std::move(callback)));
  return id;
}

void EventLoop::CancelTimer(TimerId id) {
  auto it = timers_.find(id);
  if (it == timers_.end()) return;
  auto range = timer_order_.equal_range(it->second.first);
  for (auto o = range.first; o != range.second; ++o) {
    if (o->second == id) {
      timer_order_.erase(o);
      break;
    }
  }
  timers_.erase(it);
}

void EventLoop::Defer(std::function<void()> callback) { deferred_.push_back(std::move(callback)); }

void EventLoop::Post(std::function<void()> callback) {
  {
    std::lock_guard<std::mutex> lock(posted_mu_);
    posted_.push_back(std::move(callback));
  }
  uint64_t one = 1;
  ssize_t r = ::write(wake_.get(), &one, sizeof one);
  (void)r;
}

int EventLoop::NextTimeoutMs(int requested) const {
  if (!deferred_.empty()) return 0;
  if (timer_order_.empty()) return requested;
  auto now = Clock::now();
  auto first = timer_order_.begin()->first;
  int64_t ms = 0;
  if (first > now) {
    // Round up so a timer never fires early and the loop never spins on a 0 ms wait.
    ms = std::chrono::duration_cast<std::chrono::milliseconds>(first - now +
                                                               std::chrono::microseconds(999))
             .count();
  }
  if (requested >= 0 && requested < ms) return requested;
  return static_cast<int>(std::min<int64_t>(ms, 1 << 30));
}

void EventLoop::RunTimers() {
  auto now = Clock::now();
  while (!timer_order_.empty() && timer_order_.begin()->first <= now) {
    TimerId id = timer_order_.begin()->second;
    timer_order_.erase(timer_order_.begin());
    auto it = timers_.find(id);
    if (it == timers_.end()) continue;
    auto callback = std::move(it->second.second);
    timers_.erase(it);
    callback();
  }
}

void EventLoop::RunDeferred() {
  // Callbacks may defer more work; run until quiescent, bounded so a callback that always
  // re-defers itself cannot starve the loop.
  for (int round = 0; round < 16 && !deferred_.empty(); ++round) {
    std::vector<std::function<void()>> batch;
    batch.swap(deferred_);
    for (auto& cb : batch) cb();
  }
}

void EventLoop::RunOnce(int timeout_ms) {
  int n = ::epoll_wait(epoll_.get(), events_.data(), static_cast<int>(events_.size()),
                       NextTimeoutMs(timeout_ms));
  if (n < 0 && errno != EINTR) {
    LOG_ERROR("epoll_wait: {}", std::strerror(errno));
  }
  for (int i = 0; i < n; ++i) {
    uint64_t token = events_[i].data.u64;
    if (token == kWakeToken) {
      uint64_t v;
      ssize_t r = ::read(wake_.get(), &v, sizeof v);
      (void)r;
      std::vector<std::function<void()>> posted;
      {
        std::lock_guard<std::mutex> lock(posted_mu_);
        posted.swap(posted_);
      }
      for (auto& cb : posted) cb();
      continue;
    }
    auto it = entries_.find(token);
    if (it == entries_.end()) continue;         // removed by an earlier handler of this batch
    std::shared_ptr<Entry> entry = it->second;  // keeps the handler alive while it runs
    entry->handler(events_[i].events);
  }
  RunTimers();
  RunDeferred();
}

void EventLoop::Run() {
  while (!stop_.load(std::memory_order_acquire)) RunOnce(-1);
}

void EventLoop::Stop() {
  stop_.store(true, std::memory_order_release);
  uint64_t one = 1;
  ssize_t r = ::write(wake_.get(), &one, sizeof one);
  (void)r;
}

bool EventLoop::stopped() const { return stop_.load(std::memory_order_acquire); }

}  // namespace vsockd
