/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Per-architecture kernel types, dumped from BTF by bpftool (see Makefile: make vmlinux). */
#if defined(__TARGET_ARCH_x86)
#include "vmlinux_x86.h"
#elif defined(__TARGET_ARCH_arm64)
#include "vmlinux_arm64.h"
#else
#error "nettrace: unsupported target architecture (want x86 or arm64)"
#endif
