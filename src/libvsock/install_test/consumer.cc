// Uses an installed libvsock as any other project would: parse addresses, check an error
// code, and run a stream over a plain Unix socket (no AF_VSOCK on a build machine).
// Usage: consumer DIR (a writable directory for the socket). Exit 0 on success.
#include <vsock/vsock.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::error_code ec;
  std::string why;
  auto a = vsock::Address::parse("hvsock:///run/vm:3.vsock:1024", ec, &why);
  if (!a || a->path() != "/run/vm:3.vsock" || a->port() != 1024) return 3;
  if (vsock::Address::parse("vsock://3:abc", ec, &why) || ec != std::errc::invalid_argument) {
    return 4;
  }
  std::printf("%s\n", why.c_str());

  auto addr = vsock::Address::unix_socket(std::string(argv[1]) + "/consumer.sock");
  vsock::Listener l = vsock::listen(addr, ec);
  if (ec) return 5;
  vsock::Stream c = vsock::connect(addr, std::chrono::seconds(5), ec, &why);
  if (ec) return 6;
  vsock::Stream s = l.accept(std::chrono::seconds(5), ec);
  if (ec) return 7;
  c.write_all("ping", ec);
  char buf[4];
  if (s.read(buf, 4, ec) != 4 || std::string(buf, 4) != "ping") return 8;
  std::printf("consumer ok: %s\n", a->to_string().c_str());
  return 0;
}
