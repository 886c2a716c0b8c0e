// RunMain: the one place a program's main() catches exceptions.
//
// The project reports errors by value and never throws; the standard library (std::bad_alloc)
// and CLI11's internals still can. Every executable's main() is `return RunMain("name",
// RealMain, argc, argv);` so such a failure ends with a message and exit code 1, not abort().
// Callers: the executables (vguest, vsockcat, vsockperf, vsockd_bench). Threading: main only.
#pragma once

#include <cstdio>
#include <exception>

namespace vsockd {

inline int RunMain(const char* program, int (*real_main)(int, char**), int argc, char** argv) {
  try {
    return real_main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: fatal: %s\n", program, e.what());
    return 1;
  }
}

}  // namespace vsockd
