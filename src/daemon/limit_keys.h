// The budget and policy keys of a VM (`--vm ...,max-connections=N,allow-host-ports=22+80`, the
// YAML config, and the global flags that set every VM's defaults).
//
// Role: one parser for every way a budget or policy reaches vsockd, so the flag, the --vm key
// and the YAML key accept the same text and fail with the same message. options.cc calls it
// for keys it does not own; the values land in VmOptions::budget / VmOptions::policy, which
// vsock::Device enforces (vsock/limits.h). The threat model is docs/SECURITY.md.
// Callers: daemon/options.cc. Threading: plain functions.
#pragma once

#include <string>
#include <string_view>

#include "base/result.h"
#include "vsock/limits.h"

namespace vsockd::daemon {

struct VmOptions;

// The keys, for error messages and --help ("max-connections, max-buffered-bytes, ...").
extern const char* const kLimitKeys;

// Whether `key` (normalized: '-' not '_') is a budget or policy key.
bool IsLimitKey(std::string_view key);

// Sets one budget or policy key of `vm` from its text. Sizes (max-buffered-bytes) take K, M, G
// suffixes (powers of 1024: "32M", "64MiB" and "1048576" alike); port lists are PortSet text
// ("any", "none", "22+1024-2047"; ',' works outside --vm); allow-siblings is rules
// "CID:PORTS" or "*:PORTS" joined by ';' ("4:1000-2000;*:22"), "any" or "none".
Status SetLimitKey(VmOptions* vm, std::string_view key, std::string_view value);

// Parses a size: decimal bytes with an optional K/M/G (or KiB/MiB/GiB) suffix.
Result<uint64_t> ParseSize(std::string_view key, std::string_view text);

}  // namespace vsockd::daemon
