// libvsock build configuration: the version and the symbol-export macro.
//
// Role: included by every public libvsock header. The shared library is built with hidden
// visibility; only what is marked VSOCK_API is exported, so the ABI is exactly the
// documented API. Threading: none (macros and constants).
#pragma once

#define VSOCK_VERSION_MAJOR 0
#define VSOCK_VERSION_MINOR 1
#define VSOCK_VERSION_PATCH 0

#if defined(__GNUC__) || defined(__clang__)
#define VSOCK_API __attribute__((visibility("default")))
#else
#define VSOCK_API
#endif
