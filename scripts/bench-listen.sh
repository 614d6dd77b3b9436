#!/usr/bin/env bash
# bench-listen.sh: throughput cost of `nettrace listen` on a connect-heavy
# loopback load (connect + accept + close against a listener in a fresh
# network namespace), and each BPF program's runs per connect and ns per run
# from the kernel's BPF statistics (BPF_ENABLE_STATS). Same harness as
# scripts/bench-ports.sh. Run as root on an idle machine: other load skews
# the throughput ratio (the ns per run are the steady figure).
#
# Usage: scripts/bench-listen.sh                       (3 s phases, 3 rounds off/on)
#        NETTRACE_BENCH_PHASE=5s scripts/bench-listen.sh
#        NETTRACE_LISTEN_TIER=kprobe scripts/bench-listen.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NETTRACE_BENCH=1 go test -count=1 -run '^(TestOverhead|TestDropCost)$' ./tracers/listen -v | grep -E '^(listen overhead|drops:|connects/s|throughput|traced|program|BPF time|CPU per connect|--- FAIL|FAIL)|_test.go:[0-9]+: [^l]'
