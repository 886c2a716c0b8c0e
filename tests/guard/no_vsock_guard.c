// no_vsock_guard: runs a command that must never create an AF_VSOCK socket.
//
// Role: this project is developed and tested on a VM whose /dev/vsock belongs to its
// hypervisor, so no test may ever open a real AF_VSOCK socket. The guard installs a seccomp-BPF
// filter that makes socket(AF_VSOCK, ...) and socketpair(AF_VSOCK, ...) fail with EACCES
// before the kernel creates anything, then execs its arguments. The filter is inherited by
// every child and survives exec, so everything the command starts is covered too.
//
//   no_vsock_guard COMMAND [ARGS...]     (exit 127 if the command cannot be run, 126 if the
//                                         filter cannot be installed)
//
// Callers: the shim tests (tests/integration/shim_test.cc) wrap every host program that could
// create a vsock socket (python3 with or without the LD_PRELOAD shim, the shim probe).
// Threading: single-threaded; nothing survives the exec but the filter.
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s COMMAND [ARGS...]\n", argv[0]);
    return 2;
  }
  struct sock_filter filter[] = {
      // Only x86-64 syscall numbers are checked; any other ABI (i386 via int 0x80, x32) is
      // refused outright rather than let through unchecked.
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u /* __X32_SYSCALL_BIT */, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 1, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socketpair, 0, 3),
      // socket/socketpair: the domain is args[0] (an int: compare the low 32 bits).
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_VSOCK, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EACCES & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {
      .len = (unsigned short)(sizeof filter / sizeof filter[0]),
      .filter = filter,
  };
  // Lets an unprivileged process install a filter; also keeps setuid programs from gaining
  // privileges under it.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    fprintf(stderr, "no_vsock_guard: prctl(PR_SET_NO_NEW_PRIVS): %s\n", strerror(errno));
    return 126;
  }
  if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    fprintf(stderr, "no_vsock_guard: seccomp(SECCOMP_SET_MODE_FILTER): %s\n", strerror(errno));
    return 126;
  }
  execvp(argv[1], argv + 1);
  fprintf(stderr, "no_vsock_guard: cannot run '%s': %s\n", argv[1], strerror(errno));
  return 127;
}
