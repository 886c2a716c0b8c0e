// libFuzzer target: SessionState::Decode, the session state a keeper hands a new vsockd worker
// (daemon/session_keeper.h). Its bytes cross a process boundary and describe what a frontend
// sent, so a malformed state must be refused, never trusted. First byte: how many descriptors
// came with it. A state that decodes must encode back to the same bytes and name only the
// descriptors that came (each at most once).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "vhost_user/session_state.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t fds = data[0] % 32;
  std::span<const uint8_t> bytes(data + 1, size - 1);
  auto state = vsockd::vhost_user::SessionState::Decode(bytes, fds);
  if (!state.ok()) return 0;
  if (state->fd_count() > fds) std::abort();
  std::vector<uint8_t> again = state->Encode();
  if (again.size() != bytes.size() || !std::equal(again.begin(), again.end(), bytes.begin())) {
    std::abort();
  }
  return 0;
}
