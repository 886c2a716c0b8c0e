#include "tests/integration/guest_util.h"

namespace vsockd::testing {

StreamDriver::StreamDriver(vguest::Stream* stream, std::shared_ptr<StreamObserver> obs,
                           std::vector<uint8_t> out, bool shutdown_after, size_t chunk)
    : stream_(stream),
      obs_(std::move(obs)),
      out_(std::move(out)),
      shutdown_after_(shutdown_after),
      chunk_(chunk) {
  stream_->on_data = [obs = obs_](std::span<const uint8_t> d) {
    obs->hash = Fnv1a(d, obs->hash.load());
    obs->received += d.size();
    if (obs->keep_data) obs->data.insert(obs->data.end(), d.begin(), d.end());
  };
  stream_->on_eof = [obs = obs_] { obs->eof = true; };
  stream_->on_closed = [obs = obs_](const Status& s) {
    obs->closed_code = s.ok() ? 0 : s.error().code;
    obs->closed = true;
  };
  stream_->on_writable = [this] { WriteMore(); };
}

void StreamDriver::Start() { WriteMore(); }

void StreamDriver::WriteMore() {
  while (offset_ < out_.size()) {
    size_t want = std::min(chunk_, out_.size() - offset_);
    size_t n = stream_->Write(out_.data() + offset_, want);
    offset_ += n;
    obs_->sent = offset_;
    if (n < want) return;  // on_writable brings us back
  }
  if (!obs_->send_done.exchange(true) && shutdown_after_) {
    stream_->Shutdown(false, true);
  }
}

StreamEcho::StreamEcho(vguest::Stream* stream) : stream_(stream) {
  stream_->on_data = [this](std::span<const uint8_t> d) {
    pending_.insert(pending_.end(), d.begin(), d.end());
    Flush();
  };
  stream_->on_writable = [this] { Flush(); };
  stream_->on_eof = [this] {
    eof_ = true;
    Flush();
  };
}

void StreamEcho::Flush() {
  while (!pending_.empty()) {
    size_t n = stream_->Write(pending_.data(), pending_.size());
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<long>(n));
    if (n == 0) break;
  }
  if (!pending_.empty()) {
    if (!stream_->reading_paused()) stream_->PauseReading();
    return;
  }
  if (stream_->reading_paused()) stream_->ResumeReading();
  if (eof_) stream_->Shutdown(false, true);
}

}  // namespace vsockd::testing
