// vsock::error_category(): messages and std::errc equivalents of vsock::errc.
#include "vsock/error.h"

#include <string>
#include <system_error>

#include "libvsock/internal.h"

namespace vsock {
namespace {

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "vsock"; }

  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
      case errc::invalid_address:
        return "invalid vsock address";
      case errc::handshake_refused:
        return "connection refused by the guest (nothing listens on that port, or it said no)";
      case errc::handshake_timeout:
        return "no reply to the hybrid vsock CONNECT handshake in time";
      case errc::bad_handshake_reply:
        return "malformed reply to the hybrid vsock CONNECT handshake";
    }
    return "unknown vsock error " + std::to_string(value);
  }

  // The portable condition each code belongs to, so callers can test std::errc values
  // whatever the transport.
  std::error_condition default_error_condition(int value) const noexcept override {
    switch (static_cast<errc>(value)) {
      case errc::invalid_address:
        return std::errc::invalid_argument;
      case errc::handshake_refused:
        return std::errc::connection_refused;
      case errc::handshake_timeout:
        return std::errc::timed_out;
      case errc::bad_handshake_reply:
        return std::errc::protocol_error;
    }
    return {value, *this};
  }
};

}  // namespace

const std::error_category& error_category() noexcept {
  static const Category category;
  return category;
}

}  // namespace vsock
