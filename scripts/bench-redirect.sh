#!/usr/bin/env bash
# bench-redirect.sh: `nettrace bench loopback --redirect` (ping-pong round
# trips, p50/p99, one-way MB/s at 64 B, 1 KiB, 64 KiB, 1 MiB; plain, then
# redirected on a private cgroup; every byte checked), NETTRACE_BENCH_RUNS
# times, as JSON lines in $out and tables on stdout. Run as root.
#
# Usage: scripts/bench-redirect.sh                       (3 runs, 2s per size and test)
#        NETTRACE_BENCH_D=5s NETTRACE_BENCH_RUNS=5 scripts/bench-redirect.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
go build -o "$dir/nettrace" ./cmd/nettrace
out=${NETTRACE_BENCH_OUT:-bench-redirect.jsonl}
: >"$out"
for _ in $(seq "${NETTRACE_BENCH_RUNS:-3}"); do
	"$dir/nettrace" bench loopback --redirect -d "${NETTRACE_BENCH_D:-2s}" -o json | tee -a "$out" >/dev/null
	tail -n1 "$out" | python3 -c '
import json, sys
r = json.load(sys.stdin)
for x in r["results"]:
    p, d = x["plain"], x["redirect"]
    print("%8d  RT/s %7.0f -> %7.0f (%.2fx)  p50 %6.1f -> %6.1f us  p99 %7.1f -> %7.1f us  MB/s %7.1f -> %7.1f (%.2fx)" % (
        x["size_bytes"], p["round_trips_per_s"], d["round_trips_per_s"], d["round_trips_per_s"] / p["round_trips_per_s"],
        p["p50_us"], d["p50_us"], p["p99_us"], d["p99_us"], p["mb_per_s"], d["mb_per_s"], d["mb_per_s"] / p["mb_per_s"]))
print()'
done
