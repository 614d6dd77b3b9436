#!/usr/bin/env bash
# bench-flamegraph.sh: SVG rendering of a 1,000,000-line folded file,
# `nettrace flamegraph` against flamegraph.pl on the same input.
#
# The input is what stackcollapse-perf.pl writes for a large multi-process
# profile: sorted, one line per distinct stack, integer counts. Stacks are
# random walks in a call graph:
#   - 40 processes (the root frame is the process name);
#   - 30,000 user functions with Go/C++-like names (20-60 characters), each
#     calling up to 8 others, the first callee taken half the time, the
#     second a quarter... (hot paths dominate, as in real profiles);
#   - 6 to 72 user frames (most 15-40), then in 40% of the stacks a kernel
#     tail: the syscall entry frames and 2-12 frames out of 3,000 kernel
#     functions, all with the _[k] suffix;
#   - counts 1 + an exponential with mean 20 (most stacks seen a few times).
# Duplicate stacks are merged (sort | sum), then the first N lines kept.
#
# Each tool renders the file 3 times (default options: width 1200, minwidth
# 0.1 px); wall time, user+sys CPU and max RSS come from wait4's rusage via
# /usr/bin/time -v (apt-get install time). Both SVGs are checked: well-formed
# XML, and the root frame's sample count equal to the input's sum.
#
# flamegraph.pl: set FLAMEGRAPH_PL to its path (github.com/brendangregg/
# FlameGraph; BENCHMARKS.md names the commit). Unset: its half is skipped.
# On the default input it needs about 13 GB of memory and 3-4 minutes a run.
#
# Usage: [FLAMEGRAPH_PL=/path/flamegraph.pl] scripts/bench-flamegraph.sh
#   NETTRACE_BENCH_LINES=N   input lines (1000000)
#   NETTRACE_BENCH_RUNS=N    runs per tool (3)
#   NETTRACE_BENCH_FOLDED=F  reuse (or create once) the input file F
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${NETTRACE_BENCH_LINES:-1000000}
runs=${NETTRACE_BENCH_RUNS:-3}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
folded=${NETTRACE_BENCH_FOLDED:-$dir/big.folded}

if [[ ! -x /usr/bin/time ]]; then
	echo "bench-flamegraph: /usr/bin/time not found (apt-get install time)" >&2
	exit 1
fi

go build -o "$dir/nettrace" ./cmd/nettrace

gen() {
	# $1: how many stacks to draw before merging duplicates, $2: lines kept.
	awk -v n="$1" 'BEGIN {
		srand(7)
		nf = 30000; nk = 3000; np = 40
		split("net/http runtime encoding/json database/sql crypto/tls bufio " \
			"google.golang.org/grpc github.com/acme/api/internal/store " \
			"github.com/acme/api/handlers sync compress/gzip io syscall os " \
			"com.acme.service.OrderController std::vector std::map " \
			"boost::asio::detail folly::EventBase", pkg, " ")
		split("Read Write Serve Handle Decode Encode Lock Unlock Get Put " \
			"Flush Marshal Unmarshal Query Exec Dial Accept Close Next Run", verb, " ")
		for (i = 0; i < nf; i++) {
			p = pkg[1 + i % 20]
			if (i % 3 == 0) fn[i] = p ".(*T" (i % 17) ")." verb[1 + i % 20] "_" i
			else fn[i] = p "." tolower(verb[1 + (i * 7) % 20]) "Loop" i
		}
		split("tcp ip udp sock sk vfs ext4 blk mm page sched futex ep irq net", kp, " ")
		for (i = 0; i < nk; i++) kf[i] = kp[1 + i % 15] "_" tolower(verb[1 + (i * 3) % 20]) "_" i "_[k]"
		for (s = 0; s < n; s++) {
			proc = "proc" int(rand() * np)
			line = proc
			f = int(rand() * 64)
			depth = 6 + int(rand() * 34) + int(rand() * rand() * 33)
			for (d = 0; d < depth; d++) {
				line = line ";" fn[f]
				j = 0
				while (j < 7 && rand() < 0.5) j++
				f = (f * 7919 + j * 104729 + 1) % nf
			}
			if (rand() < 0.4) {
				line = line ";entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k]"
				k = int(rand() * nk)
				kd = 2 + int(rand() * 11)
				for (d = 0; d < kd; d++) {
					line = line ";" kf[k]
					j = 0
					while (j < 5 && rand() < 0.5) j++
					k = (k * 31 + j * 997 + 1) % nk
				}
			}
			print line, 1 + int(-log(1 - rand()) * 20)
		}
	}' | LC_ALL=C sort -S 1G | awk -v max="$2" '
		{ c = $NF; sub(/ [0-9]+$/, "") }
		$0 != prev { if (NR > 1 && out++ < max) print prev, sum; prev = $0; sum = 0 }
		{ sum += c }
		END { if (NR && out < max) print prev, sum }'
}

if [[ ! -s $folded ]]; then
	echo "generating $lines stacks..."
	gen $((lines * 105 / 100)) "$lines" >"$folded"
fi
got=$(wc -l <"$folded")
total=$(awk '{ s += $NF } END { printf "%d", s }' "$folded")
echo "input: $got lines, $(du -m "$folded" | cut -f1) MB, $total samples," \
	"$(awk -F';' '{ d += NF } END { printf "%.1f", d / NR }' "$folded") frames per line," \
	"$(tr ';' '\n' <"$folded" | sed 's/ [0-9]*$//' | LC_ALL=C sort -u | wc -l) distinct frames"

# measure NAME OUT CMD...: run CMD with stdout to OUT, print one line of figures.
measure() {
	local name=$1 out=$2
	shift 2
	/usr/bin/time -v -o "$dir/time" "$@" >"$out"
	awk -v name="$name" -F': ' '
		/Elapsed \(wall clock\)/ { n = split($2, a, ":"); wall = 0; for (i = 1; i <= n; i++) wall = wall * 60 + a[i] }
		/User time/ { user = $2 }
		/System time/ { sys = $2 }
		/Maximum resident set size/ { rss = $2 }
		END { printf "%-20s wall %7.2f s  user %7.2f s  sys %6.2f s  user+sys %7.2f s  max RSS %6d MB\n", name, wall, user, sys, user + sys, rss / 1024 }
	' "$dir/time" | tee -a "$dir/results"
}

# check NAME SVG: well-formed XML, root frame count equal to the input's.
check() {
	python3 - "$1" "$2" "$total" <<'EOF'
import re, sys, xml.etree.ElementTree as ET
name, path, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
root = ET.parse(path).getroot()  # raises on malformed XML
titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
alls = [t for t in titles if t.startswith("all (")]
if len(alls) != 1:
    sys.exit(f"{name}: want one root frame titled 'all (...)', found {len(alls)}")
got = int(re.match(r"all \(([\d,]+) ", alls[0]).group(1).replace(",", ""))
if got != total:
    sys.exit(f"{name}: root frame has {got} samples, input has {total}")
print(f"{name}: well-formed SVG, {len(titles)} frames, root {got} samples (= input)")
EOF
}

for i in $(seq "$runs"); do
	measure "nettrace flamegraph" "$dir/nettrace.svg" "$dir/nettrace" flamegraph "$folded"
done
check "nettrace flamegraph" "$dir/nettrace.svg"

if [[ -z ${FLAMEGRAPH_PL:-} ]]; then
	echo "flamegraph.pl: FLAMEGRAPH_PL is not set, skipped (see BENCHMARKS.md for how to get it)"
	exit 0
fi
for i in $(seq "$runs"); do
	measure "flamegraph.pl" "$dir/pl.svg" perl "$FLAMEGRAPH_PL" "$folded"
done
check "flamegraph.pl" "$dir/pl.svg"

awk '
	/^nettrace/ { w1[++a] = $4; c1[a] = $13 }
	/^flamegraph.pl/ { w2[++b] = $3; c2[b] = $12 }
	function median(v, n,   i, j, t) {
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
		return v[int((n + 1) / 2)]
	}
	END {
		mw1 = median(w1, a); mw2 = median(w2, b); mc1 = median(c1, a); mc2 = median(c2, b)
		printf "median wall: nettrace %.2f s, flamegraph.pl %.2f s: %.1fx faster\n", mw1, mw2, mw2 / mw1
		printf "median user+sys: nettrace %.2f s, flamegraph.pl %.2f s: %.1fx less CPU\n", mc1, mc2, mc2 / mc1
	}' "$dir/results"
