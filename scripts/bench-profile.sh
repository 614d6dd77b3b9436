#!/usr/bin/env bash
# bench-profile.sh: the profiler's two benchmarks.
#  1. SVG rendering of a 1,000,000-line folded file: `nettrace flamegraph`
#     end to end (time and peak memory from /usr/bin/time), and
#     flamegraph.pl on the same file when it is in PATH.
#  2. Symbolizing 1,000,000 samples (internal/symbolize BenchmarkSymbolize:
#     a user and a kernel frame per sample, 20,000 distinct addresses,
#     symbol tables read fresh each round). Needs readable /proc/kallsyms.
# Other load on the machine skews the times; run it on an idle machine.
#
# Usage: scripts/bench-profile.sh   (NETTRACE_BENCH_LINES=N for another size)
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${NETTRACE_BENCH_LINES:-1000000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

go build -o "$dir/nettrace" ./cmd/nettrace
# Folded stacks from random walks in a call graph of 5,000 functions, each
# calling one of 3 others, 8 to 31 frames deep (as flamegraph_test.go's
# synthFolded).
awk -v n="$lines" 'BEGIN {
	srand(1)
	for (i = 0; i < n; i++) {
		depth = 8 + int(rand() * 24); fn = int(rand() * 8); s = "proc"
		for (d = 0; d < depth; d++) {
			s = s ";pkg" (fn % 7) ".function_" fn
			fn = (fn * 7919 + 1 + int(rand() * 3)) % 5000
		}
		print s, 1 + int(rand() * 100)
	}
}' >"$dir/big.folded"
echo "input: $lines lines, $(du -m "$dir/big.folded" | cut -f1) MB"

/usr/bin/time -f "nettrace flamegraph: %e s wall, %U s user, %M KB peak RSS" \
	"$dir/nettrace" flamegraph "$dir/big.folded" -o "$dir/big.svg"
echo "SVG: $(du -k "$dir/big.svg" | cut -f1) KB, $(grep -c '^<g><title>' "$dir/big.svg") frames"
if command -v flamegraph.pl >/dev/null; then
	/usr/bin/time -f "flamegraph.pl: %e s wall, %U s user, %M KB peak RSS" \
		flamegraph.pl "$dir/big.folded" >"$dir/pl.svg"
else
	echo "flamegraph.pl: not in PATH, skipped"
fi

go test -count=1 -run '^$' -bench '^BenchmarkSymbolize$' -benchtime 3x ./internal/symbolize | grep '^Benchmark'
go test -count=1 -run '^$' -bench '^BenchmarkSVG$' -benchtime 2x -benchmem ./flamegraph | grep '^Benchmark'
