// vsockperf: the iperf of vsock. Throughput (-P, -R), latency and connect-rate tests between
// a client and a server over kernel AF_VSOCK (vsock://), vsockd's hybrid sockets
// (hvsock://PATH:PORT) or a virtual guest attached to vsockd (--vguest SOCKET).
//
//   vsockperf -s vsock://any:5201                   server in a guest
//   vsockperf -s hvsock:///run/vm3.vsock:5201       server on the host (guest -> host tests)
//   vsockperf -s --vguest /run/vm3.vhost:5201       server as a virtual guest, guest port 5201
//   vsockperf -c vsock://3:5201 -t 10 -P 4          client in a host/guest, kernel vsock
//   vsockperf -c hvsock:///run/vm3.vsock:5201 -R    client on the host (host -> guest)
//   vsockperf -c --vguest /run/vm3.vhost:5201 -n 1G client as a virtual guest -> host port
//
// Exit status: 0 success, 1 the test failed (message on stderr), 2 bad arguments.
// Threading: one event loop thread.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "base/event_loop.h"
#include "base/log.h"
#include "base/run_main.h"
#include "tools/vsockperf/perf.h"
#include "tools/vsockperf/protocol.h"
#include "tools/vsockperf/report.h"
#include "vsock/vsock.h"

namespace vsockd::vsockperf {
namespace {

EventLoop* g_loop = nullptr;

void OnSignal(int) {
  if (g_loop != nullptr) g_loop->Stop();
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "vsockperf: %s\nRun with --help for more information.\n", why.c_str());
  return 2;
}

bool ParsePort(std::string_view text, uint32_t* port) {
  uint64_t v = 0;
  if (text.empty() || text.size() > 10) return false;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > 0xFFFFFFFEu) return false;
  *port = static_cast<uint32_t>(v);
  return true;
}

constexpr uint32_t kDefaultPort = 5201;

int Main(int argc, char** argv) {
  CLI::App app{
      "vsockperf: the iperf of vsock (throughput, latency, connect rate).\n"
      "Addresses: vsock://CID:PORT (kernel AF_VSOCK), hvsock://PATH:PORT (vsockd's hybrid "
      "socket: a client reaches guest port PORT; a server listens on PATH_PORT for guest -> "
      "host connections), unix:PATH; or --vguest SOCKET[:PORT]: run as a virtual guest "
      "attached to vsockd's vhost-user SOCKET (client: connects to host port PORT; server: "
      "listens on guest port PORT; default 5201).\n"
      "Exit status: 0 success, 1 test failed, 2 bad arguments."};
  app.set_version_flag("--version", "vsockperf 0.1.0");
  std::string server_arg, client_arg, vguest_arg, bytes_arg, length_arg, log_level = "warn";
  ClientOptions o;
  double seconds = 10;
  bool latency = false, connect_rate = false, seqpacket = false;
  uint64_t count = 0;
  uint32_t msg_size = 64;
  auto* s_opt = app.add_option("-s,--server", server_arg,
                               "run as server on ADDRESS (with --vguest: optional PORT)")
                    ->expected(0, 1);
  auto* c_opt = app.add_option("-c,--client", client_arg,
                               "run as client to ADDRESS (with --vguest: optional PORT)")
                    ->expected(0, 1);
  app.add_option("--vguest", vguest_arg,
                 "SOCKET[:PORT]: be a virtual guest on vsockd's vhost-user socket");
  auto* t_opt = app.add_option("-t,--time", seconds, "seconds to run (default 10)");
  app.add_option("-n,--bytes", bytes_arg, "bytes to send in total instead of -t (K/M/G)");
  app.add_option("-l,--length", length_arg, "bytes per write (K/M; default 128K)");
  app.add_option("-P,--parallel", o.streams, "parallel streams (1..128)")->capture_default_str();
  app.add_flag("-R,--reverse", o.reverse, "reverse: the server sends, the client receives");
  app.add_flag("--latency", latency, "round-trip latency test (the server echoes)");
  app.add_option("--size", msg_size, "latency message size in bytes")->capture_default_str();
  app.add_option("--count", count, "latency round trips / connections instead of -t");
  app.add_flag("--connect-rate", connect_rate, "connections per second test");
  app.add_option("-i,--interval", o.interval, "seconds between interval reports (0: none)")
      ->capture_default_str();
  app.add_flag("--seqpacket", seqpacket,
               "SOCK_SEQPACKET instead of streams (hybrid: vsockd's .seqpacket sockets); each "
               "write (-l, --size) is one message, at most 128K");
  app.add_flag("--json", o.json, "print one JSON document with intervals and summary");
  app.add_option("--log-level", log_level, "debug, info, warn, error or off")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  SetLogTag("vsockperf");
  LogLevel level;
  if (!ParseLogLevel(log_level, &level)) return Usage("bad --log-level '" + log_level + "'");
  SetLogLevel(level);

  bool server = s_opt->count() > 0, client = c_opt->count() > 0;
  if (server == client) return Usage("give exactly one of -s (server) and -c (client)");
  const std::string& target = server ? server_arg : client_arg;

  // Where to go: a libvsock address, or a vguest socket and port.
  std::optional<::vsock::Address> address;
  std::string vguest_socket;
  uint32_t vguest_port = kDefaultPort;
  if (!vguest_arg.empty()) {
    vguest_socket = vguest_arg;
    size_t colon = vguest_arg.rfind(':');
    uint32_t p;
    if (colon != std::string::npos && ParsePort(vguest_arg.substr(colon + 1), &p)) {
      vguest_socket = vguest_arg.substr(0, colon);
      vguest_port = p;
    }
    if (!target.empty()) {
      std::error_code ec;
      auto a = ::vsock::Address::parse(target, ec);
      if (ParsePort(target, &vguest_port)) {
      } else if (a && a->is_vsock() && (server || a->cid() == ::vsock::cid_host) &&
                 a->port() != ::vsock::port_any) {
        vguest_port = a->port();
      } else {
        return Usage(fmt::format("with --vguest, {} takes a port (or vsock://2:PORT), not '{}'",
                                 server ? "-s" : "-c", target));
      }
    }
    if (vguest_socket.empty()) return Usage("--vguest needs vsockd's vhost-user socket path");
  } else {
    if (target.empty()) {
      return Usage(fmt::format("{} needs an ADDRESS (or --vguest SOCKET)", server ? "-s" : "-c"));
    }
    std::error_code ec;
    std::string why;
    address = ::vsock::Address::parse(target, ec, &why);
    if (!address) return Usage(why);
    if (client && address->is_vsock() &&
        (address->cid() == ::vsock::cid_any || address->port() == ::vsock::port_any)) {
      return Usage(
          fmt::format("cannot connect to '{}': give a CID and a port", address->to_string()));
    }
  }

  if (client) {
    if (latency && connect_rate) return Usage("--latency and --connect-rate exclude each other");
    o.kind = latency        ? TestKind::kLatency
             : connect_rate ? TestKind::kConnectRate
                            : TestKind::kThroughput;
    if (!bytes_arg.empty()) {
      if (t_opt->count() > 0) return Usage("-t and -n exclude each other");
      if (o.kind != TestKind::kThroughput) return Usage("-n is for throughput tests");
      if (!ParseSize(bytes_arg, &o.bytes) || o.bytes == 0) {
        return Usage("-n '" + bytes_arg + "': not a byte count (e.g. 65536, 64K, 64M, 1G)");
      }
    }
    if (!length_arg.empty()) {
      uint64_t l = 0;
      if (!ParseSize(length_arg, &l) || l == 0 || l > kMaxWriteSize) {
        return Usage("-l '" + length_arg + "': not a write size 1..16M");
      }
      o.write_size = static_cast<uint32_t>(l);
    }
    if (!(seconds > 0) || seconds > 86400) return Usage("-t: seconds must be in (0, 86400]");
    o.seconds = seconds;
    if (o.streams == 0 || o.streams > kMaxStreams) return Usage("-P: 1..128 streams");
    if (!(o.interval >= 0)) return Usage("-i: seconds must be >= 0");
    if (o.kind != TestKind::kThroughput && (o.reverse || o.streams > 1)) {
      return Usage("-R and -P are for throughput tests");
    }
    if (msg_size == 0 || msg_size > kMaxWriteSize) return Usage("--size: 1..16M bytes");
    if (count > 0 && o.kind == TestKind::kThroughput) {
      return Usage("--count is for --latency and --connect-rate");
    }
    if (count > 0 && t_opt->count() > 0) return Usage("-t and --count exclude each other");
    o.msg_size = msg_size;
    o.count = count;
  }

  if (seqpacket) {
    if (!vguest_arg.empty()) return Usage("--seqpacket is for libvsock addresses, not --vguest");
    if (client && (o.write_size > kMaxSeqpacketMessage || o.msg_size > kMaxSeqpacketMessage)) {
      return Usage("--seqpacket: -l and --size are message sizes, at most 128K");
    }
  }

  ::signal(SIGPIPE, SIG_IGN);
  auto loop = EventLoop::Create();
  if (!loop.ok()) {
    std::fprintf(stderr, "vsockperf: %s\n", loop.error().ToString().c_str());
    return 1;
  }
  g_loop = loop->get();
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::unique_ptr<Transport> transport;
  if (address) {
    transport = MakeLibvsockTransport(loop->get(), *address, seqpacket);
  } else {
    auto t = MakeVguestTransport(loop->get(), vguest_socket, vguest_port);
    if (!t.ok()) {
      std::fprintf(stderr, "vsockperf: attach to %s: %s\n", vguest_socket.c_str(),
                   t.error().ToString().c_str());
      return 1;
    }
    transport = std::move(*t);
  }
  int rc = server ? RunServer(loop->get(), transport.get(), stdout)
                  : RunClient(loop->get(), transport.get(), o, stdout);
  g_loop = nullptr;
  return rc;
}

}  // namespace
}  // namespace vsockd::vsockperf

int main(int argc, char** argv) {
  return vsockd::RunMain("vsockperf", vsockd::vsockperf::Main, argc, argv);
}
