// vsockctl: asks a running vsockd what it is doing, over its control socket (--control).
//
//   vsockctl [--socket PATH] [--json] vms [CID]      the VMs: attached, queues, budgets in use
//   vsockctl [--socket PATH] [--json] stats [CID]    packets, bytes, connections per VM
//   vsockctl [--socket PATH] [--json] conns [CID]    open connections (like ss)
//   vsockctl [--socket PATH] reload                  re-read vsockd's --config file
//   vsockctl [--socket PATH] upgrade                 start vsockd's binary again, keeping the
//                                                    VMs' sessions (vsockd --keep-sessions)
//   vsockctl [--socket PATH] version
//   vsockctl [--socket PATH] capture CID -w FILE [-c COUNT] [-s SNAPLEN] [--max-bytes N]
//            [--seconds S]                     the VM's packets as pcap (Wireshark: vsock),
//                                              until COUNT, S seconds or Ctrl-C
// The protocol (one JSON object per line) is daemon/control.h's; --json prints vsockd's
// answer as it came. Exit codes: 0 ok, 1 vsockd answered an error or could not be reached,
// 2 usage.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "base/run_main.h"
#include "base/unix_socket.h"

namespace {

using nlohmann::json;
using namespace vsockd;

constexpr const char* kDefaultSocket = "/run/vsockd/control.sock";

// Sends one request line and reads one answer line.
Result<json> Ask(const std::string& socket, const json& request) {
  auto fd = ConnectUnix(socket);
  if (!fd.ok()) {
    return MakeError(fd.error().code,
                     "cannot reach vsockd's control socket '{}' ({}): is vsockd running with "
                     "--control {}?",
                     socket, fd.error().ToString(), socket);
  }
  std::string line = request.dump() + "\n";
  for (size_t off = 0; off < line.size();) {
    ssize_t n = ::write(fd->get(), line.data() + off, line.size() - off);
    if (n <= 0) return ErrnoError("write to '{}'", socket);
    off += static_cast<size_t>(n);
  }
  std::string answer;
  char buf[65536];
  while (answer.find('\n') == std::string::npos) {
    ssize_t n = ::read(fd->get(), buf, sizeof buf);
    if (n < 0) return ErrnoError("read from '{}'", socket);
    if (n == 0) return MakeError(EPROTO, "vsockd closed the control connection without answering");
    answer.append(buf, static_cast<size_t>(n));
  }
  json j = json::parse(answer.substr(0, answer.find('\n')), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return MakeError(EPROTO, "vsockd's answer is not JSON");
  return j;
}

std::string Size(uint64_t bytes) {
  if (bytes >= (1ull << 30) && bytes % (1ull << 20) == 0) {
    return fmt::format("{:.1f}G", static_cast<double>(bytes) / (1ull << 30));
  }
  if (bytes >= (1ull << 20)) return fmt::format("{:.1f}M", static_cast<double>(bytes) / (1 << 20));
  if (bytes >= (1ull << 10)) return fmt::format("{:.1f}K", static_cast<double>(bytes) / (1 << 10));
  return fmt::format("{}", bytes);
}

void PrintVms(const json& answer) {
  fmt::print("{:<6} {:<8} {:>8} {:<9} {:<9} {:>13} {:>17} {}\n", "CID", "ATTACHED", "SESSIONS",
             "SEQPACKET", "RX/TX", "CONNS/MAX", "BUFFERED/MAX", "SOCKET / HYBRID");
  for (const json& vm : answer.at("vms")) {
    const json& q = vm.at("queues");
    std::string queues = fmt::format("{}/{}", q.at("rx").at("size").get<uint32_t>(),
                                     q.at("tx").at("size").get<uint32_t>());
    std::string conns = fmt::format("{}/{}", vm.at("use").at("connections").get<uint64_t>(),
                                    vm.at("budget").at("max_connections").get<uint64_t>());
    std::string buffered =
        fmt::format("{}/{}", Size(vm.at("use").at("buffered_bytes").get<uint64_t>()),
                    Size(vm.at("budget").at("max_buffered_bytes").get<uint64_t>()));
    fmt::print("{:<6} {:<8} {:>8} {:<9} {:<9} {:>13} {:>17} {} / {}\n",
               vm.at("cid").get<uint64_t>(), vm.at("attached").get<bool>() ? "yes" : "no",
               vm.at("sessions").get<uint64_t>(), vm.at("seqpacket").get<bool>() ? "yes" : "no",
               queues, conns, buffered, vm.at("socket").get<std::string>(),
               vm.at("uds_path").get<std::string>());
  }
}

void PrintStats(const json& answer) {
  fmt::print("{:<6} {:>12} {:>12} {:>10} {:>10} {:>8} {:>8} {:>9} {:>7} {:>9}\n", "CID",
             "PKTS G->H", "PKTS H->G", "BYTES G->H", "BYTES H->G", "DROPPED", "RST", "OPENED",
             "ACTIVE", "BUFFERED");
  for (const json& vm : answer.at("vms")) {
    fmt::print("{:<6} {:>12} {:>12} {:>10} {:>10} {:>8} {:>8} {:>9} {:>7} {:>9}\n",
               vm.at("cid").get<uint64_t>(), vm.at("tx_packets").get<uint64_t>(),
               vm.at("rx_packets").get<uint64_t>(), Size(vm.at("tx_bytes").get<uint64_t>()),
               Size(vm.at("rx_bytes").get<uint64_t>()), vm.at("dropped_packets").get<uint64_t>(),
               vm.at("rst_sent").get<uint64_t>(), vm.at("connections_opened").get<uint64_t>(),
               vm.at("connections_active").get<uint64_t>(),
               Size(vm.at("buffered_bytes").get<uint64_t>()));
  }
  fmt::print("uptime {:.0f} s, {} worker(s), {} reload(s) ({} failed)\n",
             answer.at("uptime_seconds").get<double>(), answer.at("workers").get<uint64_t>(),
             answer.at("reloads").get<uint64_t>(), answer.at("reload_failures").get<uint64_t>());
}

std::string Age(double seconds) {
  if (seconds < 60) return fmt::format("{:.1f}s", seconds);
  if (seconds < 3600)
    return fmt::format("{}m{:02}s", static_cast<int>(seconds) / 60, static_cast<int>(seconds) % 60);
  return fmt::format("{}h{:02}m", static_cast<int>(seconds) / 3600,
                     static_cast<int>(seconds) / 60 % 60);
}

// One line per connection, like ss: who opened it, its state, bytes each way, what the
// device still buffers, the credit each side has, and the host socket it is bridged to.
void PrintConns(const json& answer) {
  fmt::print("{:<6} {:<9} {:>10} {:<16} {:<5} {:<16} {:>10} {:>10} {:>8} {:>15} {:>7} {}\n", "CID",
             "TYPE", "GUEST-PORT", "PEER", "BY", "STATE", "FROM-GUEST", "TO-GUEST", "BUFFERED",
             "CREDIT G/V", "AGE", "HOST SOCKET");
  size_t total = 0;
  for (const json& vm : answer.at("vms")) {
    for (const json& c : vm.at("connections")) {
      ++total;
      const json& credit = c.at("credit");
      std::string peer =
          fmt::format("{}:{}", c.at("peer_cid").get<uint64_t>(), c.at("peer_port").get<uint32_t>());
      std::string state = c.at("state").get<std::string>();
      for (const json& bit : c.at("guest_shutdown")) state += "," + bit.get<std::string>();
      // The end that names the host service: the listener a guest reached (its peer), or the
      // hybrid socket a host program came in through (our end); siblings have none.
      std::string host = c.at("host_peer").get<std::string>();
      if (host.empty()) host = c.at("host_local").get<std::string>();
      if (host.empty()) host = c.at("peer_cid").get<uint64_t>() == 2 ? "-" : "(sibling VM)";
      fmt::print("{:<6} {:<9} {:>10} {:<16} {:<5} {:<16} {:>10} {:>10} {:>8} {:>15} {:>7} {}\n",
                 vm.at("cid").get<uint64_t>(), c.at("type").get<std::string>(),
                 c.at("guest_port").get<uint32_t>(), peer,
                 c.at("initiator").get<std::string>() == "guest" ? "guest" : "peer", state,
                 Size(c.at("bytes_from_guest").get<uint64_t>()),
                 Size(c.at("bytes_to_guest").get<uint64_t>()),
                 Size(c.at("buffered").get<uint64_t>()),
                 fmt::format("{}/{}", Size(credit.at("guest_may_send").get<uint64_t>()),
                             Size(credit.at("we_may_send").get<uint64_t>())),
                 Age(c.at("age_seconds").get<double>()), host);
    }
  }
  fmt::print("{} connection{}\n", total, total == 1 ? "" : "s");
}

volatile sig_atomic_t g_interrupted = 0;

// A capture from start to stop: starts it in vsockd (which writes the file), waits for the
// count, the time or Ctrl-C, stops it, and says how much it got.
int Capture(const std::string& socket, uint64_t cid, std::string path, uint32_t snaplen,
            uint64_t count, uint64_t max_bytes, double seconds) {
  if (path.empty()) {
    std::fprintf(stderr, "vsockctl: capture needs -w FILE\n");
    return 2;
  }
  if (path[0] != '/') {  // vsockd writes the file: its working directory is not ours
    char cwd[4096];
    if (::getcwd(cwd, sizeof cwd) != nullptr) path = std::string(cwd) + "/" + path;
  }
  json start{{"cmd", "capture"},    {"cid", cid},         {"action", "start"},
             {"path", path},        {"snaplen", snaplen}, {"max_bytes", max_bytes},
             {"max_packets", count}};
  auto started = Ask(socket, start);
  if (!started.ok() || !started->value("ok", false)) {
    std::fprintf(
        stderr, "vsockctl: %s\n",
        started.ok() ? started->value("error", "error").c_str() : started.error().context.c_str());
    return 1;
  }
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_interrupted = 1; };
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  std::fprintf(stderr, "capturing CID %llu to %s (Ctrl-C stops)\n",
               static_cast<unsigned long long>(cid), path.c_str());
  const auto begin = std::chrono::steady_clock::now();
  while (g_interrupted == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (seconds > 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count() >=
            seconds) {
      break;
    }
    auto st = Ask(socket, json{{"cmd", "capture"}, {"cid", cid}, {"action", "status"}});
    if (!st.ok() || !st->value("ok", false) || st->value("full", false)) break;
  }
  auto stopped = Ask(socket, json{{"cmd", "capture"}, {"cid", cid}, {"action", "stop"}});
  if (!stopped.ok() || !stopped->value("ok", false)) {
    std::fprintf(
        stderr, "vsockctl: %s\n",
        stopped.ok() ? stopped->value("error", "error").c_str() : stopped.error().context.c_str());
    return 1;
  }
  std::printf("%llu packets (%llu bytes) captured to %s\n",
              static_cast<unsigned long long>(stopped->value("packets", uint64_t{0})),
              static_cast<unsigned long long>(stopped->value("bytes", uint64_t{0})), path.c_str());
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app(
      "vsockctl: ask a running vsockd what it is doing, over its control socket (vsockd "
      "--control PATH; the socket is mode 0600: run vsockctl as vsockd's user, usually root).",
      "vsockctl");
  app.set_version_flag("--version", fmt::format("vsockctl {}", VSOCKCTL_VERSION));
  app.require_subcommand(1);
  const char* env = std::getenv("VSOCKD_CONTROL");
  std::string socket = env != nullptr && *env != '\0' ? env : kDefaultSocket;
  bool as_json = false;
  app.add_option("--socket,-s", socket, "vsockd's control socket ($VSOCKD_CONTROL)")
      ->type_name("PATH")
      ->default_str(kDefaultSocket);
  app.add_flag("--json,-j", as_json, "print vsockd's JSON answer as it came");
  uint64_t cid = 0;
  CLI::App* vms = app.add_subcommand("vms", "the VMs: attached, features, queues, budgets in use");
  vms->add_option("CID", cid, "only this VM");
  CLI::App* stats = app.add_subcommand("stats", "packets, bytes and connections per VM");
  stats->add_option("CID", cid, "only this VM");
  CLI::App* conns = app.add_subcommand(
      "conns",
      "open connections, like ss: type, guest port, peer, state, bytes each way, credit "
      "(G: the guest may send, V: vsockd may send), age, host socket");
  conns->add_option("CID", cid, "only this VM");
  app.add_subcommand("reload", "re-read vsockd's --config file (as SIGHUP)");
  app.add_subcommand("upgrade",
                     "start vsockd's binary again without restarting the VMs (needs vsockd "
                     "--keep-sessions; as SIGUSR2 to its keeper)");
  app.add_subcommand("version", "vsockd's version");
  CLI::App* capture = app.add_subcommand(
      "capture", "capture a VM's packets as pcap (LINKTYPE_VSOCK, Wireshark's vsock)");
  std::string capture_path;
  uint32_t snaplen = 0;
  uint64_t count = 0;
  uint64_t max_bytes = 0;
  double seconds = 0;
  capture->add_option("CID", cid, "the VM")->required();
  capture->add_option("-w,--write", capture_path, "the pcap file (written by vsockd)")
      ->required()
      ->type_name("FILE");
  capture->add_option("-c,--count", count, "stop after this many packets")->type_name("N");
  capture->add_option("-s,--snaplen", snaplen, "payload bytes kept per packet (0: all)")
      ->type_name("BYTES");
  capture->add_option("--max-bytes", max_bytes, "stop when the file reaches this size")
      ->type_name("BYTES");
  capture->add_option("--seconds", seconds, "stop after this long")->type_name("S");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  const std::string cmd = app.get_subcommands().front()->get_name();
  if (cmd == "capture") {
    return Capture(socket, cid, capture_path, snaplen, count, max_bytes, seconds);
  }
  json request{{"cmd", cmd}};
  if (cid != 0) request["cid"] = cid;
  auto answer = Ask(socket, request);
  if (!answer.ok()) {
    std::fprintf(stderr, "vsockctl: %s\n", answer.error().context.c_str());
    return 1;
  }
  if (!answer->value("ok", false)) {
    std::fprintf(stderr, "vsockctl: vsockd: %s\n", answer->value("error", "error").c_str());
    return 1;
  }
  if (as_json) {
    std::puts(answer->dump(2).c_str());
  } else if (cmd == "vms") {
    PrintVms(*answer);
  } else if (cmd == "stats") {
    PrintStats(*answer);
  } else if (cmd == "conns") {
    PrintConns(*answer);
  } else if (cmd == "reload") {
    std::puts("reloaded");
  } else if (cmd == "upgrade") {
    std::puts("upgrading: the keeper starts vsockd's binary again; the VMs keep their devices");
  } else {
    std::puts(answer->at("version").get<std::string>().c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return vsockd::RunMain("vsockctl", Main, argc, argv); }
