#!/usr/bin/env bash
# bench-ports.sh: throughput cost of `nettrace ports` on a connect-heavy
# loopback load, and each BPF program's ns per run from the kernel's BPF
# statistics (BPF_ENABLE_STATS). Run as root; other load on the machine
# skews the ratio, so run it on an idle machine.
#
# Usage: scripts/bench-ports.sh            (3 s phases, 3 rounds off/on)
#        NETTRACE_BENCH_PHASE=5s scripts/bench-ports.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NETTRACE_BENCH=1 go test -count=1 -run '^(TestOverhead|TestDispatchCost|TestSocktableCost)$' ./tracers/ports -v | grep -E '^(ports overhead|connects/s|throughput|program|BPF time|CPU per connect|dispatch|socket table)'
