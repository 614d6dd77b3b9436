#!/usr/bin/env bash
# bench-timewait.sh: one `nettrace timewait` interval (iter/tcp walk, diff,
# rows) over 100,000 TIME_WAIT sockets held in a fresh network namespace:
# wall time, CPU time and allocations per walk; then the shared socket table
# read alone (every state, TIME_WAIT only, LISTEN only = the kernel's walk
# with every socket skipped) with the iterator program's ns per socket from
# the kernel's BPF statistics, and the decode alone. Run as root, on an
# otherwise idle machine: CPU time is the steadier figure.
#
# Usage: scripts/bench-timewait.sh                  (100,000 sockets, 20 walks)
#        NETTRACE_BENCH_TW=200000 scripts/bench-timewait.sh
set -euo pipefail
cd "$(dirname "$0")/.."
n="${NETTRACE_BENCH_WALKS:-20}x"
filter='^(goos|goarch|cpu|Benchmark|ok|FAIL|--- FAIL)|_test.go'
go test -count=1 -run '^$' -bench '^BenchmarkWalk$' -benchmem -benchtime "$n" ./tracers/timewait | grep -E "$filter"
go test -count=1 -run '^$' -bench '^Benchmark(Read|Decode)$' -benchmem -benchtime "$n" ./internal/socktable | grep -E "$filter"
