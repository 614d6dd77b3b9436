#!/usr/bin/env bash
# bench-timewait.sh: one `nettrace timewait` interval (iter/tcp walk, diff,
# rows) over 100,000 TIME_WAIT sockets held in a fresh network namespace:
# wall time and CPU time per walk. Run as root, on an otherwise idle machine.
#
# Usage: scripts/bench-timewait.sh                  (100,000 sockets, 20 walks)
#        NETTRACE_BENCH_TW=200000 scripts/bench-timewait.sh
set -euo pipefail
cd "$(dirname "$0")/.."
go test -count=1 -run '^$' -bench '^BenchmarkWalk$' -benchtime "${NETTRACE_BENCH_WALKS:-20}x" ./tracers/timewait |
	grep -E '^(goos|goarch|cpu|BenchmarkWalk|ok|FAIL|--- FAIL)|_test.go'
