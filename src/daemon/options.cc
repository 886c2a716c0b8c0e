#include "daemon/options.h"

#include <yaml-cpp/yaml.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <cerrno>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "daemon/inherited_sockets.h"
#include "daemon/limit_keys.h"
#include "vsock/admission.h"

namespace vsockd::daemon {
namespace {

constexpr uint64_t kCidHypervisor = 0;
constexpr uint64_t kCidLocal = 1;
constexpr uint64_t kCidHost = 2;
constexpr uint64_t kCidAny = 0xFFFFFFFFull;

constexpr const char* kDescription =
    "vsockd: a userspace virtio-vsock device for QEMU (vhost-user backend).\n"
    "Guest vsock connections are bridged to host Unix sockets with the hybrid convention of\n"
    "Firecracker and Cloud Hypervisor:\n"
    "  guest -> host port X: vsockd connects to the Unix socket <uds-path>_X;\n"
    "  host -> guest port X: connect to <uds-path>, write \"CONNECT X\\n\", read \"OK <n>\\n\",\n"
    "  then the socket is the connection (a line starting \"ERR \" and a close on failure).\n"
    "  \"OK <n>\": n is the host-side port (--ok-reply host-port, as Firecracker and Cloud\n"
    "  Hypervisor) or the guest port (--ok-reply guest-port, as vhost-device-vsock).\n"
    "--tx-buffer-size is how much guest data may wait per connection for a slow host reader\n"
    "(advertised to the guest as buf_alloc; default 256 KiB, vhost-device-vsock's is 64 KiB).\n"
    "--run-dir DIR (optional) lets host programs reach this VM by CID, as with AF_VSOCK (see\n"
    "the LD_PRELOAD shim libvsock_preload.so): vsockd also listens on DIR/cid_<guest-cid>\n"
    "(same CONNECT/OK protocol), and guest -> host port X goes to <uds-path>_X if that path\n"
    "exists, else to DIR/host_X (shared by every VM). One of --uds-path and --run-dir is\n"
    "required.\n"
    "--connect-timeout-ms bounds a host -> guest connect waiting for the guest's answer and a\n"
    "guest -> host connect retrying a listener whose backlog is full.\n"
    "\n"
    "Several VMs (one vhost-user socket and CID each), as vhost-device-vsock:\n"
    "  --vm guest-cid=3,socket=PATH,uds-path=PATH[,tx-buffer-size=N][,queue-size=N]\n"
    "       [,groups=a+b][,run-dir=DIR][,ok-reply=KIND][,connect-timeout-ms=MS]\n"
    "  (repeat --vm per VM; keys take '-' or '_'), or --config FILE, a YAML file:\n"
    "    vms:\n"
    "      - guest_cid: 3\n"
    "        socket: /tmp/vhost3.socket\n"
    "        uds_path: /tmp/vm3.vsock\n"
    "        groups: group1+group2\n"
    "  --socket, --guest-cid, --uds-path and --groups describe the single VM and cannot be\n"
    "  mixed with --vm/--config; --run-dir, --tx-buffer-size, --queue-size, --ok-reply and\n"
    "  --connect-timeout-ms are then defaults for every VM. CIDs, vhost-user sockets and\n"
    "  hybrid paths must be unique (checked at start, exit code 2).\n"
    "Guest <-> guest: a guest connecting to another VM's CID reaches it when the two VMs\n"
    "share a group (default: every VM is in group \"default\"); the other guest sees the\n"
    "caller's CID and port. Other CIDs (not served here, or no group in common) get RST.\n"
    "Each VM runs on one of --workers threads (default: one per core, at most one per VM).\n"
    "\n"
    "Budgets and access policy, per VM (--vm KEY=VALUE, the config file's VM entries or its\n"
    "'defaults:' map) or for every VM (--KEY VALUE): max-connections, max-buffered-bytes,\n"
    "max-host-fds, connect-rate, connect-burst; allow-host-ports (guest -> host),\n"
    "allow-guest-ports (host -> guest) and allow-siblings (guest -> guest), e.g.\n"
    "  --vm guest-cid=3,...,max-connections=256,allow-host-ports=22+1024-2047,\n"
    "       allow-siblings=4:5000-5010;*:22\n"
    "A connect over budget or against policy gets RST (guest) or an ERR line (host). The\n"
    "open-file limit is divided among the VMs (start fails, exit code 2, when explicit\n"
    "max-host-fds cannot fit). The rules and defaults: docs/SECURITY.md.";

constexpr const char* kFooter =
    "Example:\n"
    "  vsockd --socket /tmp/vsock3.sock --guest-cid 3 --uds-path /tmp/vm3.vsock &\n"
    "  qemu-system-x86_64 -m 2G \\\n"
    "    -object memory-backend-memfd,id=mem0,size=2G,share=on \\\n"
    "    -machine q35,memory-backend=mem0 \\\n"
    "    -chardev socket,id=vsk0,path=/tmp/vsock3.sock \\\n"
    "    -device vhost-user-vsock-pci,chardev=vsk0 ...\n"
    "  # host -> guest port 1024:\n"
    "  socat - UNIX-CONNECT:/tmp/vm3.vsock   (then type: CONNECT 1024)\n"
    "  # guest -> host port 52: listen on /tmp/vm3.vsock_52\n"
    "Guest memory must be shared with vsockd (memfd or file backend with share=on).\n"
    "Start QEMU once vsockd is ready: --ready-fd, or systemd Type=notify (NOTIFY_SOCKET).\n"
    "SIGINT/SIGTERM stop vsockd cleanly and remove the sockets it created. SIGHUP re-reads\n"
    "--config FILE: VMs added, removed or changed apply at once, the others are untouched.";

// Socket activation (daemon/inherited_sockets.h), appended to the footer.
constexpr const char* kSocketActivationHelp =
    "\n"
    "Socket activation (QEMU may start before vsockd): a VM's vhost-user socket (--socket,\n"
    "the socket key) may be fd:N, a listening Unix socket inherited as descriptor N, or\n"
    "systemd:NAME, the socket systemd passed with FileDescriptorName=NAME. A socket systemd\n"
    "passed (LISTEN_FDS) that is bound to a VM's socket PATH is used for it as well; vsockd\n"
    "then leaves the file alone. Inherited sockets must be listening AF_UNIX stream sockets\n"
    "(a socket unit with ListenStream=PATH and Accept=no).";

std::string UsageError(const std::string& message) {
  return fmt::format("vsockd: error: {}\nRun 'vsockd --help' for usage.\n", message);
}

// The one number parser of the flags and VM specs: decimal digits only (no sign, no spaces,
// nothing after), so "3x" or "-1" is an error, not 3 or 2^64-1 as strtoull would make them.
enum class Digits { kOk, kNotDecimal, kTooLarge };
Digits ParseDigits(std::string_view text, uint64_t* value) {
  if (text.empty()) return Digits::kNotDecimal;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return Digits::kNotDecimal;
    if (v > (UINT64_MAX - 9) / 10) return Digits::kTooLarge;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *value = v;
  return Digits::kOk;
}

}  // namespace

std::string VersionString() { return fmt::format("vsockd {}", VSOCKD_VERSION); }

Status ValidateGuestCid(uint64_t cid) {
  const char* name = nullptr;
  switch (cid) {
    case kCidHypervisor:
      name = "VMADDR_CID_HYPERVISOR";
      break;
    case kCidLocal:
      name = "VMADDR_CID_LOCAL";
      break;
    case kCidHost:
      name = "VMADDR_CID_HOST";
      break;
    case kCidAny:
      name = "VMADDR_CID_ANY";
      break;
    default:
      break;
  }
  if (name != nullptr) {
    return MakeError(EINVAL, "guest CID {} is reserved ({}); use 3..4294967294", cid, name);
  }
  if (cid > kCidAny) {
    return MakeError(ERANGE, "guest CID {} does not fit in 32 bits; use 3..4294967294", cid);
  }
  return OkStatus();
}

Result<uint64_t> ParseGuestCid(std::string_view text) {
  if (text.empty()) return MakeError(EINVAL, "empty guest CID; use 3..4294967294");
  uint64_t value = 0;
  switch (ParseDigits(text, &value)) {
    case Digits::kNotDecimal:
      return MakeError(EINVAL, "guest CID '{}' is not a decimal number; use 3..4294967294", text);
    case Digits::kTooLarge:
      return MakeError(ERANGE, "guest CID {} does not fit in 32 bits; use 3..4294967294", text);
    case Digits::kOk:
      break;
  }
  VSOCKD_RETURN_IF_ERROR(ValidateGuestCid(value));
  return value;
}

namespace {

constexpr uint32_t kMinTxBuffer = 1024;
constexpr uint32_t kMaxTxBuffer = uint32_t{1} << 30;
constexpr uint32_t kMaxQueueSize = 32768;
constexpr uint32_t kMaxConnectTimeoutMs = 600000;
constexpr const char* kVmKeys =
    "guest-cid, socket, uds-path, run-dir, tx-buffer-size, queue-size, ok-reply, "
    "connect-timeout-ms, groups, pcap";

Result<uint64_t> ParseDecimal(std::string_view key, std::string_view text, uint64_t min,
                              uint64_t max) {
  if (text.empty()) return MakeError(EINVAL, "{}: empty value", key);
  uint64_t value = 0;
  switch (ParseDigits(text, &value)) {
    case Digits::kNotDecimal:
      return MakeError(EINVAL, "{}: '{}' is not a decimal number", key, text);
    case Digits::kTooLarge:
      return MakeError(ERANGE, "{}: {} is too large", key, text);
    case Digits::kOk:
      break;
  }
  if (value < min || value > max) {
    return MakeError(ERANGE, "{}: {} is out of range {}..{}", key, text, min, max);
  }
  return value;
}

Result<std::vector<std::string>> ParseGroups(std::string_view text) {
  std::vector<std::string> groups;
  size_t start = 0;
  for (;;) {
    size_t end = text.find('+', start);
    std::string_view name = text.substr(start, end == std::string_view::npos ? end : end - start);
    if (name.empty()) return MakeError(EINVAL, "groups: empty group name in '{}'", text);
    for (char c : name) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '-' || c == '_' || c == '.';
      if (!ok) {
        return MakeError(EINVAL, "groups: '{}' may only hold letters, digits, '-', '_', '.'", name);
      }
    }
    if (std::find(groups.begin(), groups.end(), name) == groups.end()) groups.emplace_back(name);
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return groups;
}

std::string NormalizeKey(std::string_view key) {
  std::string k(key);
  for (char& c : k) {
    if (c == '_') c = '-';
  }
  return k;
}

// Sets one key of a VM. `seen` catches a key given twice.
Status SetVmKey(VmOptions* vm, std::string_view raw_key, std::string_view value,
                std::set<std::string>* seen) {
  std::string key = NormalizeKey(raw_key);
  if (!seen->insert(key).second) return MakeError(EINVAL, "key '{}' given twice", key);
  if (key == "guest-cid") {
    auto cid = ParseGuestCid(value);
    if (!cid.ok()) return MakeError(cid.error().code, "guest-cid: {}", cid.error().context);
    vm->guest_cid = *cid;
  } else if (key == "socket") {
    if (value.empty()) return MakeError(EINVAL, "socket: empty path");
    // PATH, fd:N or systemd:NAME (daemon/inherited_sockets.h).
    if (auto spec = ParseSocketSpec(value); !spec.ok()) return spec.take_error();
    vm->socket_path = std::string(value);
  } else if (key == "uds-path") {
    if (value.empty()) return MakeError(EINVAL, "uds-path: empty path");
    vm->uds_path = std::string(value);
  } else if (key == "run-dir") {
    if (value.empty()) return MakeError(EINVAL, "run-dir: empty path");
    vm->run_dir = std::string(value);
    while (vm->run_dir.size() > 1 && vm->run_dir.back() == '/') vm->run_dir.pop_back();
  } else if (key == "tx-buffer-size") {
    auto v = ParseDecimal(key, value, kMinTxBuffer, kMaxTxBuffer);
    if (!v.ok()) return v.take_error();
    vm->tx_buffer_size = static_cast<uint32_t>(*v);
  } else if (key == "queue-size") {
    auto v = ParseDecimal(key, value, 1, kMaxQueueSize);
    if (!v.ok()) return v.take_error();
    vm->queue_size = static_cast<uint32_t>(*v);
  } else if (key == "ok-reply") {
    if (value == "host-port") {
      vm->ok_reply = host::OkReply::kHostPort;
    } else if (value == "guest-port") {
      vm->ok_reply = host::OkReply::kGuestPort;
    } else {
      return MakeError(EINVAL, "ok-reply: '{}' is not host-port or guest-port", value);
    }
  } else if (key == "connect-timeout-ms") {
    auto v = ParseDecimal(key, value, 1, kMaxConnectTimeoutMs);
    if (!v.ok()) return v.take_error();
    vm->connect_timeout = std::chrono::milliseconds(*v);
  } else if (key == "groups") {
    auto groups = ParseGroups(value);
    if (!groups.ok()) return groups.take_error();
    vm->groups = std::move(*groups);
  } else if (key == "pcap") {
    if (value.empty()) return MakeError(EINVAL, "pcap: empty path");
    vm->pcap = std::string(value);
  } else if (IsLimitKey(key)) {
    return SetLimitKey(vm, key, value);
  } else if (key == "forward-cid" || key == "forward-listen") {
    return MakeError(ENOTSUP,
                     "'{}' (vhost-device-vsock's host AF_VSOCK backend) is not supported: "
                     "vsockd never opens AF_VSOCK sockets on the host; use uds-path",
                     key);
  } else {
    return MakeError(EINVAL, "unknown key '{}' (known: {}, {})", raw_key, kVmKeys, kLimitKeys);
  }
  return OkStatus();
}

}  // namespace

Status ValidateVm(const VmOptions& vm) {
  if (vm.socket_path.empty()) return MakeError(EINVAL, "socket is required");
  if (vm.uds_path.empty() && vm.run_dir.empty()) {
    return MakeError(EINVAL, "uds-path is required (or run-dir)");
  }
  VSOCKD_RETURN_IF_ERROR(ValidateGuestCid(vm.guest_cid));
  if (vm.socket_path == vm.uds_path) {
    return MakeError(EINVAL, "socket and uds-path must be different paths ('{}')", vm.socket_path);
  }
  if (vm.tx_buffer_size < kMinTxBuffer || vm.tx_buffer_size > kMaxTxBuffer) {
    return MakeError(ERANGE, "tx-buffer-size {} is out of range {}..{}", vm.tx_buffer_size,
                     kMinTxBuffer, kMaxTxBuffer);
  }
  if (vm.queue_size == 0 || vm.queue_size > kMaxQueueSize ||
      (vm.queue_size & (vm.queue_size - 1)) != 0) {
    return MakeError(EINVAL, "queue-size {} is not a power of two <= {}", vm.queue_size,
                     kMaxQueueSize);
  }
  if (vm.groups.empty()) return MakeError(EINVAL, "groups: at least one group is needed");
  // Every connection keeps at least kMinBufAlloc of credit (vsock/admission.h).
  const uint64_t floor = uint64_t{vm.budget.max_connections} * vsock::kMinBufAlloc;
  if (vm.budget.max_buffered_bytes < floor) {
    return MakeError(EINVAL,
                     "max-buffered-bytes {} is below max-connections {} x {} bytes ({}): raise "
                     "it or lower max-connections",
                     vm.budget.max_buffered_bytes, vm.budget.max_connections, vsock::kMinBufAlloc,
                     floor);
  }
  return OkStatus();
}

Status ValidateVms(const std::vector<VmOptions>& vms) {
  if (vms.empty()) return MakeError(EINVAL, "no VM configured");
  std::map<uint64_t, size_t> cids;
  std::map<std::string, std::string> paths;  // path -> "VM #n's socket"
  for (size_t i = 0; i < vms.size(); ++i) {
    const VmOptions& vm = vms[i];
    if (Status s = ValidateVm(vm); !s.ok()) {
      return MakeError(s.error().code, "VM #{} (guest-cid {}): {}", i + 1, vm.guest_cid,
                       s.error().context);
    }
    if (auto [it, added] = cids.emplace(vm.guest_cid, i); !added) {
      return MakeError(EEXIST, "duplicate guest CID {} (VM #{} and VM #{})", vm.guest_cid,
                       it->second + 1, i + 1);
    }
    auto claim = [&](const std::string& path, const char* what) -> Status {
      if (path.empty()) return OkStatus();
      std::string who = fmt::format("VM #{}'s {}", i + 1, what);
      if (auto [it, added] = paths.emplace(path, who); !added) {
        return MakeError(EEXIST, "duplicate path '{}' ({} and {})", path, it->second, who);
      }
      return OkStatus();
    };
    VSOCKD_RETURN_IF_ERROR(claim(vm.socket_path, "socket"));
    VSOCKD_RETURN_IF_ERROR(claim(vm.uds_path, "uds-path"));
  }
  return OkStatus();
}

Result<VmOptions> ParseVmSpec(std::string_view spec, const VmOptions& defaults) {
  VmOptions vm = defaults;
  std::set<std::string> seen;
  if (spec.empty()) return MakeError(EINVAL, "empty VM description");
  size_t start = 0;
  for (;;) {
    size_t end = spec.find(',', start);
    std::string_view item = spec.substr(start, end == std::string_view::npos ? end : end - start);
    size_t eq = item.find('=');
    if (item.empty() || eq == std::string_view::npos || eq == 0) {
      return MakeError(EINVAL, "'{}' is not key=value (keys: {}, {})", item, kVmKeys, kLimitKeys);
    }
    VSOCKD_RETURN_IF_ERROR(SetVmKey(&vm, item.substr(0, eq), item.substr(eq + 1), &seen));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  VSOCKD_RETURN_IF_ERROR(ValidateVm(vm));
  return vm;
}

namespace {

// A YAML value as the --vm text of its key: scalars as they are; lists joined the way the
// --vm form joins them (groups and port lists with '+', sibling rules with ';'), and sibling
// rules may be {cid, ports} maps.
Result<std::string> YamlValueText(const std::string& key, const YAML::Node& node) {
  if (node.IsScalar()) return node.as<std::string>();
  const std::string k = NormalizeKey(key);
  const bool list_key =
      k == "groups" || k == "allow-host-ports" || k == "allow-guest-ports" || k == "allow-siblings";
  if (!node.IsSequence() || !list_key) {
    return MakeError(EINVAL, "'{}' must be a single value", key);
  }
  if (node.size() == 0) {
    if (k == "groups") return MakeError(EINVAL, "groups: at least one group is needed");
    return std::string("none");  // an empty allow list allows nothing
  }
  std::string text;
  for (const YAML::Node& item : node) {
    std::string piece;
    if (item.IsScalar()) {
      piece = item.as<std::string>();
    } else if (k == "allow-siblings" && item.IsMap()) {
      std::string cid = "*";
      std::string ports = "any";
      for (const auto& kv : item) {
        const std::string field = kv.first.as<std::string>();
        if (!kv.second.IsScalar() && !(field == "ports" && kv.second.IsSequence())) {
          return MakeError(EINVAL, "{}: '{}' must be a single value", key, field);
        }
        if (field == "cid") {
          cid = kv.second.as<std::string>();
        } else if (field == "ports") {
          auto text_ports = YamlValueText("allow-host-ports", kv.second);
          if (!text_ports.ok()) return text_ports.take_error();
          ports = *text_ports;
        } else {
          return MakeError(EINVAL, "{}: unknown field '{}' (cid, ports)", key, field);
        }
      }
      piece = fmt::format("{}:{}", cid, ports);
    } else {
      return MakeError(EINVAL, "{}: entries must be single values", key);
    }
    text += (text.empty() ? "" : (k == "allow-siblings" ? ";" : "+")) + piece;
  }
  return text;
}

// Applies one YAML map's keys to `vm`; `where` prefixes errors ("config: vms[2]").
Status ApplyYamlMap(const YAML::Node& map, VmOptions* vm, const std::string& where,
                    bool identity_allowed) {
  std::set<std::string> seen;
  for (const auto& kv : map) {
    const std::string key = kv.first.as<std::string>();
    const int line = kv.first.Mark().line + 1;
    const std::string k = NormalizeKey(key);
    if (!identity_allowed && (k == "guest-cid" || k == "socket" || k == "uds-path")) {
      return MakeError(EINVAL, "{} (line {}): '{}' names one VM and belongs in its vms entry",
                       where, line, key);
    }
    auto value = YamlValueText(key, kv.second);
    if (!value.ok()) {
      return MakeError(value.error().code, "{} (line {}): {}", where, line, value.error().context);
    }
    if (Status s = SetVmKey(vm, key, *value, &seen); !s.ok()) {
      return MakeError(s.error().code, "{} (line {}): {}", where, line, s.error().context);
    }
  }
  return OkStatus();
}

}  // namespace

Result<std::vector<VmOptions>> ParseConfigYaml(std::string_view text, const VmOptions& defaults,
                                               std::string_view source) {
  // yaml-cpp reports through exceptions; they stop here.
  try {
    YAML::Node root = YAML::Load(std::string(text));
    if (!root.IsMap()) return MakeError(EINVAL, "{}: expected a map with a 'vms' list", source);
    for (const auto& kv : root) {
      std::string key = kv.first.as<std::string>();
      if (key != "vms" && key != "defaults") {
        return MakeError(EINVAL,
                         "{}: unknown top-level key '{}' at line {} (expected 'vms', "
                         "'defaults')",
                         source, key, kv.first.Mark().line + 1);
      }
    }
    VmOptions base = defaults;
    if (YAML::Node d = root["defaults"]; d) {
      if (!d.IsMap()) {
        return MakeError(EINVAL, "{}: 'defaults' (line {}) must be a map of VM keys", source,
                         d.Mark().line + 1);
      }
      VSOCKD_RETURN_IF_ERROR(
          ApplyYamlMap(d, &base, fmt::format("{}: defaults", source), /*identity_allowed=*/false));
    }
    YAML::Node list = root["vms"];
    if (!list || !list.IsSequence() || list.size() == 0) {
      return MakeError(EINVAL, "{}: 'vms' must be a non-empty list", source);
    }
    std::vector<VmOptions> vms;
    for (size_t i = 0; i < list.size(); ++i) {
      const YAML::Node& entry = list[i];
      if (!entry.IsMap()) {
        return MakeError(EINVAL, "{}: vms[{}] (line {}) is not a map", source, i,
                         entry.Mark().line + 1);
      }
      VmOptions vm = base;
      VSOCKD_RETURN_IF_ERROR(ApplyYamlMap(entry, &vm, fmt::format("{}: vms[{}]", source, i),
                                          /*identity_allowed=*/true));
      if (Status s = ValidateVm(vm); !s.ok()) {
        return MakeError(s.error().code, "{}: vms[{}] (line {}): {}", source, i,
                         entry.Mark().line + 1, s.error().context);
      }
      vms.push_back(std::move(vm));
    }
    return vms;
  } catch (const YAML::Exception& e) {
    return MakeError(EINVAL, "{}: YAML error at line {}: {}", source, e.mark.line + 1, e.msg);
  }
}

Result<std::vector<VmOptions>> LoadConfigFile(const std::string& path, const VmOptions& defaults) {
  std::ifstream in(path);
  if (!in) return MakeError(ENOENT, "cannot read config file '{}'", path);
  std::stringstream text;
  text << in.rdbuf();
  return ParseConfigYaml(text.str(), defaults, path);
}

ParseOutcome ParseCommandLine(int argc, const char* const* argv) {
  ParseOutcome out;
  Options& o = out.options;

  CLI::App app(kDescription, "vsockd");
  app.footer(std::string(kFooter) + kSocketActivationHelp);
  app.set_version_flag("--version", VersionString());
  app.get_formatter()->column_width(34);

  std::string cid_text = "3";
  std::string ok_reply = "host-port";
  std::string log_level = "info";
  bool no_seqpacket = false;
  std::string groups_text = "default";
  std::string config_path;
  std::vector<std::string> vm_specs;
  uint32_t connect_timeout_ms = static_cast<uint32_t>(o.connect_timeout.count());

  // --socket and --uds-path are required, but checked after parsing: CLI11 reports missing
  // options before unknown ones, and "--socket is required" is a poor answer to a typo.
  CLI::Option* socket_opt =
      app.add_option("--socket", o.socket_path,
                     "vhost-user socket to listen on (QEMU's chardev path), or fd:N or "
                     "systemd:NAME (an inherited socket, see below); required")
          ->type_name("PATH");
  CLI::Option* cid_opt = app.add_option("--guest-cid", cid_text, "guest context ID, 3..4294967294")
                             ->type_name("CID")
                             ->default_str("3");
  CLI::Option* uds_opt = app.add_option("--uds-path", o.uds_path,
                                        "hybrid host socket P (guest -> host port X goes to P_X)")
                             ->type_name("PATH");
  CLI::Option* groups_opt =
      app.add_option("--groups", groups_text, "sibling groups, '+'-separated (guest <-> guest)")
          ->type_name("G1+G2")
          ->default_str("default");
  app.add_option("--vm", vm_specs, "one VM as key=value,... (repeatable); see above")
      ->type_name("SPEC")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--config", config_path, "YAML file with a 'vms:' list; see above")
      ->type_name("FILE");
  app.add_option("--workers", o.workers, "worker threads for the VMs (default: cores)")
      ->type_name("N")
      ->check(CLI::Range(1u, 1024u).description(""));
  app.add_option("--run-dir", o.run_dir,
                 "run directory: listen on DIR/cid_<CID>, guest -> host fallback DIR/host_X")
      ->type_name("DIR");
  app.add_option("--tx-buffer-size", o.tx_buffer_size,
                 "per-connection buffer for guest data (buf_alloc), 1024..2^30")
      ->type_name("BYTES")
      ->default_val(o.tx_buffer_size)
      ->check(CLI::Range(kMinTxBuffer, kMaxTxBuffer).description(""));
  app.add_option("--queue-size", o.queue_size,
                 "largest virtqueue size accepted, power of two <= 32768")
      ->type_name("N")
      ->default_val(o.queue_size)
      ->check(CLI::Range(uint32_t{1}, kMaxQueueSize).description(""));
  app.add_option("--ok-reply", ok_reply, "n in the \"OK n\" reply: host-port or guest-port")
      ->type_name("KIND")
      ->default_str("host-port")
      ->check(CLI::IsMember({"host-port", "guest-port"}).description(""));
  app.add_option("--connect-timeout-ms", connect_timeout_ms,
                 "connect timeout, either direction, 1..600000")
      ->type_name("MS")
      ->default_val(connect_timeout_ms)
      ->check(CLI::Range(uint32_t{1}, kMaxConnectTimeoutMs).description(""));
  app.add_flag("--no-seqpacket", no_seqpacket,
               "do not offer SOCK_SEQPACKET to the guests (VIRTIO_VSOCK_F_SEQPACKET)");
  // Budgets and policy (daemon/limit_keys.h): defaults for every VM; a --vm key or the
  // config file's overrides them. Parsed after CLI11, by the same code as the --vm keys.
  struct LimitFlag {
    const char* key;
    const char* type;
    const char* help;
    std::string value;
  };
  std::array<LimitFlag, 8> limit_flags{{
      {"max-connections", "N", "per VM: connections, both directions (default 4096)", {}},
      {"max-buffered-bytes", "SIZE", "per VM: guest data buffered in vsockd (default 32M)", {}},
      {"max-host-fds", "N", "per VM: host sockets (default 4096, within its fd share)", {}},
      {"connect-rate", "N", "per VM: new connections a second, 0 = no limit (default 2000)", {}},
      {"connect-burst", "N", "per VM: connections at once above the rate (default 4000)", {}},
      {"allow-host-ports", "PORTS", "guest -> host ports allowed (default any)", {}},
      {"allow-guest-ports", "PORTS", "host -> guest ports allowed (default any)", {}},
      {"allow-siblings", "RULES", "guest -> sibling CID:PORTS;... allowed (default any)", {}},
  }};
  for (LimitFlag& flag : limit_flags) {
    app.add_option(fmt::format("--{}", flag.key), flag.value, flag.help)->type_name(flag.type);
  }
  app.add_option("--control", o.control_path,
                 "control socket for vsockctl (created mode 0600; off by default)")
      ->type_name("PATH");
  CLI::Option* pcap_opt =
      app.add_option("--pcap", o.pcap, "capture the VM's packets to FILE (pcap, LINKTYPE_VSOCK)")
          ->type_name("FILE");
  app.add_option("--metrics-listen", o.metrics_listen,
                 "serve Prometheus metrics at /metrics on unix:PATH or ADDR:PORT")
      ->type_name("ENDPOINT");
  app.add_option("--ready-fd", o.ready_fd,
                 "write READY\\n to this descriptor once listening, then close it")
      ->type_name("FD")
      ->check(CLI::Range(0, 1 << 20).description(""));
  app.add_flag("--keep-sessions", o.keep_sessions,
               "run under a keeper process that holds the VMs' vhost-user sessions: vsockd "
               "restarts after a crash, or upgrades on SIGUSR2, without restarting the VMs");
  app.add_option("--keeper-fd", o.keeper_fd, "internal: the keeper's link (set by the keeper)")
      ->type_name("FD")
      ->group("")
      ->check(CLI::Range(0, 1 << 20).description(""));
  app.add_option("--log-level", log_level, "debug, info, warn or error")
      ->type_name("LEVEL")
      ->default_str("info")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}).description(""));

  // CLI11 reports through exceptions; they stop here (the project's code does not throw).
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out.output = app.help();
    return out;
  } catch (const CLI::CallForAllHelp&) {
    out.output = app.help("", CLI::AppFormatMode::All);
    return out;
  } catch (const CLI::CallForVersion& e) {
    out.output = std::string(e.what()) + "\n";
    return out;
  } catch (const CLI::ParseError& e) {
    out.exit_code = 2;
    out.output = UsageError(e.what());
    return out;
  }
  auto fail = [&](const std::string& message) {
    out.exit_code = 2;
    out.output = UsageError(message);
    return out;
  };

  while (o.run_dir.size() > 1 && o.run_dir.back() == '/') o.run_dir.pop_back();
  if ((o.queue_size & (o.queue_size - 1)) != 0) {
    return fail(fmt::format("--queue-size {} is not a power of two", o.queue_size));
  }
  o.ok_reply = ok_reply == "guest-port" ? host::OkReply::kGuestPort : host::OkReply::kHostPort;
  o.connect_timeout = std::chrono::milliseconds(connect_timeout_ms);
  o.seqpacket = !no_seqpacket;  // before the VmOptions part becomes every VM's defaults
  for (const LimitFlag& flag : limit_flags) {
    if (flag.value.empty()) continue;
    if (Status s = SetLimitKey(&o, flag.key, flag.value); !s.ok()) {
      return fail(fmt::format("--{}", s.error().context));
    }
  }
  if (!ParseLogLevel(log_level, &o.log_level)) {
    return fail(fmt::format("unknown log level '{}'", log_level));
  }

  const bool multi = !vm_specs.empty() || !config_path.empty();
  if (multi) {
    for (CLI::Option* single : {socket_opt, cid_opt, uds_opt, groups_opt, pcap_opt}) {
      if (single->count() > 0) {
        return fail(fmt::format(
            "{} describes the single VM and cannot be mixed with --vm/--config (give it as a "
            "key of each --vm, or in the config file)",
            single->get_name()));
      }
    }
    if (!vm_specs.empty() && !config_path.empty()) {
      return fail("--vm and --config cannot be mixed: put every VM in one of them");
    }
    // The VmOptions part holds the global defaults; the single-VM fields stay unset.
    VmOptions defaults = o;
    if (!config_path.empty()) {
      o.config_path = config_path;
      auto vms = LoadConfigFile(config_path, defaults);
      if (!vms.ok()) return fail(fmt::format("--config: {}", vms.error().context));
      o.vms = std::move(*vms);
    } else {
      for (size_t i = 0; i < vm_specs.size(); ++i) {
        auto vm = ParseVmSpec(vm_specs[i], defaults);
        if (!vm.ok()) {
          return fail(fmt::format("--vm #{} '{}': {}", i + 1, vm_specs[i], vm.error().context));
        }
        o.vms.push_back(std::move(*vm));
      }
    }
    if (Status s = ValidateVms(o.vms); !s.ok()) return fail(s.error().context);
    out.run = true;
    return out;
  }

  if (o.socket_path.empty()) return fail("--socket is required (or --vm / --config)");
  if (auto spec = ParseSocketSpec(o.socket_path); !spec.ok()) {
    return fail(fmt::format("--{}", spec.error().context));
  }
  if (o.uds_path.empty() && o.run_dir.empty()) {
    return fail("--uds-path is required (or --run-dir)");
  }
  auto cid = ParseGuestCid(cid_text);
  if (!cid.ok()) return fail(cid.error().context);
  o.guest_cid = *cid;
  if (o.socket_path == o.uds_path) return fail("--socket and --uds-path must be different paths");
  auto groups = ParseGroups(groups_text);
  if (!groups.ok()) return fail(fmt::format("--{}", groups.error().context));
  o.groups = std::move(*groups);
  o.vms.push_back(static_cast<const VmOptions&>(o));
  out.run = true;
  return out;
}

}  // namespace vsockd::daemon
