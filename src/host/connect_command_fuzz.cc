// libFuzzer target: the hybrid CONNECT command reader, fed in arbitrary pieces.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "host/connect_command.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // First byte: the chunk size for splitting the rest into reads.
  size_t chunk = static_cast<size_t>(data[0] % 16) + 1;
  std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  vsockd::host::ConnectCommandReader reader;
  for (size_t off = 0; off < input.size(); off += chunk) {
    reader.Append(input.substr(off, chunk));
  }
  if (reader.buffered() > vsockd::host::kDefaultMaxCommandLine) std::abort();
  if (reader.state() == vsockd::host::ConnectCommandReader::State::kError) {
    if (vsockd::host::ContainsOk(vsockd::host::MakeErrLine(reader.error()))) std::abort();
  }
  (void)vsockd::host::ParseConnectLine(input);
  return 0;
}
