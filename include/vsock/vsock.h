// libvsock: vsock stream sockets with the same code on both sides of a VM.
//
// In a guest, programs use the kernel's AF_VSOCK (vsock://CID:PORT). On a host served by
// vsockd, the guest's vsock is reached through vsockd's "hybrid" Unix sockets
// (hvsock://PATH:PORT, PATH = vsockd's --uds-path). libvsock hides the difference: parse an
// address from your configuration, then connect / listen / accept / read / write the same
// way. C++20 standard library and POSIX only; no exceptions: every fallible call takes a
// std::error_code& (vsock/error.h).
//
// Link with CMake `find_package(vsock)` + `target_link_libraries(app PRIVATE vsock::vsock)`,
// or `pkg-config --cflags --libs vsock`.
//
// Client (host or guest, depending only on the address text):
//
//   #include <vsock/vsock.h>
//
//   std::error_code ec;
//   std::string why;
//   auto addr = vsock::Address::parse(argv[1], ec, &why);  // "vsock://2:1024" in a guest,
//   if (!addr) { std::cerr << why << "\n"; return 2; }     // "hvsock:///run/vm3.vsock:1024"
//                                                          // on the host
//   vsock::Stream s = vsock::connect(*addr, std::chrono::seconds(5), ec, &why);
//   if (ec == std::errc::connection_refused) { /* nobody listens on that port */ }
//   if (ec) { std::cerr << why << "\n"; return 1; }
//   s.write_all("hello\n", ec);
//   s.shutdown(vsock::Shutdown::write, ec);                // half-close: EOF at the peer
//   char buf[4096];
//   while (size_t n = s.read_some(buf, sizeof buf, ec)) fwrite(buf, 1, n, stdout);
//
// Server (guest: listen on any CID; host: the hybrid side of guest -> host port 1024):
//
//   auto addr = vsock::Address::parse("1024", ec);   // = vsock://any:1024 (in a guest)
//   // or: vsock::Address::hybrid("/run/vm3.vsock", 1024)  (listens on /run/vm3.vsock_1024)
//   vsock::Listener l = vsock::listen(*addr, ec);
//   for (;;) {
//     vsock::Stream c = l.accept(ec);
//     if (ec) break;
//     std::cout << "from " << c.peer_address().to_string() << "\n";
//     ...
//   }
//
// Non-blocking connect in your own poll/epoll loop: vsock::Connector (vsock/stream.h).
// Whole messages (SOCK_SEQPACKET) instead of a byte stream: vsock/seqpacket.h.
//
// Threading: objects are owned by one thread at a time; there is no global state besides
// the error category.
#pragma once

#include "vsock/address.h"
#include "vsock/config.h"
#include "vsock/error.h"
#include "vsock/listener.h"
#include "vsock/seqpacket.h"
#include "vsock/stream.h"
