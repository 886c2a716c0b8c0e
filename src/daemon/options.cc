#include "daemon/options.h"

#include <CLI/CLI.hpp>
#include <cerrno>

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
    "guest -> host connect retrying a listener whose backlog is full.";

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
    "SIGINT/SIGTERM stop vsockd cleanly and remove the sockets it created.";

std::string UsageError(const std::string& message) {
  return fmt::format("vsockd: error: {}\nRun 'vsockd --help' for usage.\n", message);
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
  for (char c : text) {
    if (c < '0' || c > '9') {
      return MakeError(EINVAL, "guest CID '{}' is not a decimal number; use 3..4294967294", text);
    }
    if (value > (UINT64_MAX - 9) / 10) {
      return MakeError(ERANGE, "guest CID {} does not fit in 32 bits; use 3..4294967294", text);
    }
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  VSOCKD_RETURN_IF_ERROR(ValidateGuestCid(value));
  return value;
}

ParseOutcome ParseCommandLine(int argc, const char* const* argv) {
  ParseOutcome out;
  Options& o = out.options;

  CLI::App app(kDescription, "vsockd");
  app.footer(kFooter);
  app.set_version_flag("--version", VersionString());
  app.get_formatter()->column_width(34);

  std::string cid_text = "3";
  std::string ok_reply = "host-port";
  std::string log_level = "info";
  uint32_t connect_timeout_ms = static_cast<uint32_t>(o.connect_timeout.count());

  // --socket and --uds-path are required, but checked after parsing: CLI11 reports missing
  // options before unknown ones, and "--socket is required" is a poor answer to a typo.
  app.add_option("--socket", o.socket_path,
                 "vhost-user socket to listen on (QEMU's chardev path), required")
      ->type_name("PATH");
  app.add_option("--guest-cid", cid_text, "guest context ID, 3..4294967294")
      ->type_name("CID")
      ->default_str("3");
  app.add_option("--uds-path", o.uds_path,
                 "hybrid host socket P (guest -> host port X goes to P_X)")
      ->type_name("PATH");
  app.add_option("--run-dir", o.run_dir,
                 "run directory: listen on DIR/cid_<CID>, guest -> host fallback DIR/host_X")
      ->type_name("DIR");
  app.add_option("--tx-buffer-size", o.tx_buffer_size,
                 "per-connection buffer for guest data (buf_alloc), 1024..2^30")
      ->type_name("BYTES")
      ->default_val(o.tx_buffer_size)
      ->check(CLI::Range(uint32_t{1024}, uint32_t{1} << 30).description(""));
  app.add_option("--queue-size", o.queue_size,
                 "largest virtqueue size accepted, power of two <= 32768")
      ->type_name("N")
      ->default_val(o.queue_size)
      ->check(CLI::Range(uint32_t{1}, uint32_t{32768}).description(""));
  app.add_option("--ok-reply", ok_reply, "n in the \"OK n\" reply: host-port or guest-port")
      ->type_name("KIND")
      ->default_str("host-port")
      ->check(CLI::IsMember({"host-port", "guest-port"}).description(""));
  app.add_option("--connect-timeout-ms", connect_timeout_ms,
                 "connect timeout, either direction, 1..600000")
      ->type_name("MS")
      ->default_val(connect_timeout_ms)
      ->check(CLI::Range(uint32_t{1}, uint32_t{600000}).description(""));
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

  if (o.socket_path.empty()) {
    out.exit_code = 2;
    out.output = UsageError("--socket is required");
    return out;
  }
  if (o.uds_path.empty() && o.run_dir.empty()) {
    out.exit_code = 2;
    out.output = UsageError("--uds-path is required (or --run-dir)");
    return out;
  }
  while (o.run_dir.size() > 1 && o.run_dir.back() == '/') o.run_dir.pop_back();

  auto cid = ParseGuestCid(cid_text);
  if (!cid.ok()) {
    out.exit_code = 2;
    out.output = UsageError(cid.error().context);
    return out;
  }
  o.guest_cid = *cid;
  if ((o.queue_size & (o.queue_size - 1)) != 0) {
    out.exit_code = 2;
    out.output = UsageError(fmt::format("--queue-size {} is not a power of two", o.queue_size));
    return out;
  }
  if (o.socket_path == o.uds_path) {
    out.exit_code = 2;
    out.output = UsageError("--socket and --uds-path must be different paths");
    return out;
  }
  o.ok_reply = ok_reply == "guest-port" ? host::OkReply::kGuestPort : host::OkReply::kHostPort;
  o.connect_timeout = std::chrono::milliseconds(connect_timeout_ms);
  if (!ParseLogLevel(log_level, &o.log_level)) {
    out.exit_code = 2;
    out.output = UsageError(fmt::format("unknown log level '{}'", log_level));
    return out;
  }
  out.run = true;
  return out;
}

}  // namespace vsockd::daemon
