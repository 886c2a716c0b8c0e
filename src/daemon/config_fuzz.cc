// libFuzzer target: vsockd's configuration parsers (the YAML config, --vm specs, port lists
// and sibling rules). A config is the administrator's input, not a guest's, but vsockd
// reparses it at runtime (reload) and a bad file must fail with a message, never crash it.
//
// The first byte picks the parser; the rest is its text. Port lists and sibling rules must
// round-trip: Parse(ToString()) equals the parsed value, and Contains agrees with the text's
// ranges at their edges.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "daemon/options.h"
#include "vsock/limits.h"

using namespace vsockd;

namespace {

void CheckPortSet(const vsock::PortSet& set) {
  auto again = vsock::PortSet::Parse(set.ToString());
  if (!again.ok() || !(*again == set)) std::abort();
  for (const auto& r : set.ranges()) {
    if (r.first > r.last || !set.Contains(r.first) || !set.Contains(r.last)) std::abort();
    if (r.first > 0 && set.Contains(r.first - 1)) std::abort();  // ranges are merged
    if (r.last < UINT32_MAX && set.Contains(r.last + 1)) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  daemon::VmOptions defaults;
  switch (data[0] % 4) {
    case 0: {
      auto vms = daemon::ParseConfigYaml(text, defaults, "fuzz.yaml");
      if (vms.ok()) {
        if (vms->empty()) std::abort();  // a config always has a VM
        for (const auto& vm : *vms) {
          if (!daemon::ValidateVm(vm).ok()) std::abort();
        }
      }
      break;
    }
    case 1: {
      auto vm = daemon::ParseVmSpec(text, defaults);
      if (vm.ok() && !daemon::ValidateVm(*vm).ok()) std::abort();
      break;
    }
    case 2: {
      auto set = vsock::PortSet::Parse(text);
      if (set.ok()) CheckPortSet(*set);
      break;
    }
    default: {
      auto rule = vsock::SiblingRule::Parse(text);
      if (rule.ok()) {
        auto again = vsock::SiblingRule::Parse(rule->ToString());
        if (!again.ok() || !(*again == *rule)) std::abort();
        CheckPortSet(rule->ports);
      }
      break;
    }
  }
  return 0;
}
