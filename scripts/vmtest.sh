#!/usr/bin/env bash
# vmtest.sh runs Go test binaries as root inside Debian's stock 6.1 cloud
# kernel under qemu TCG, where kprobes and fentry work.
#
# Usage: scripts/vmtest.sh [PKG ...]
#   PKG defaults to every package with tests under ./internal/... ./tracers/...
#   ./cmd/... of the module in $VMTEST_MODDIR (default: this repository).
# Environment:
#   VMTEST_ARGS     extra test binary flags, e.g. '-test.run TestAttach'
#   VMTEST_TIMEOUT  seconds before qemu is killed (default 600)
#   VMTEST_QUIET=1  print the -test.v output of failed packages only
#   VMTEST_MODDIR   module to build the packages from
#   VMTEST_KERNEL   bzImage to boot instead of the newest Debian 6.1 cloud kernel
#   VMTEST_KEEP=1   keep the work directory after a successful run
#   CI and NETTRACE_* are passed to the tests; NETTRACE_VMTEST=1,
#   NETTRACE_BIN, NETTRACE_TESTDATA_BIN (the static C test programs) and
#   NETTRACE_EXPECT_TIER (from VMTEST_EXPECT_TIER, default fentry: the
#   host's value describes the host's kernel) are set.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
moddir=${VMTEST_MODDIR:-$(dirname "$here")}
timeout_s=${VMTEST_TIMEOUT:-600}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/nettrace/vmtest
GO=${GO:-go}

log() { echo "vmtest: $*" >&2; }
die() {
	log "$*"
	exit 1
}
is_root() { [ "$(id -u)" = 0 ]; }

# apt_install installs Debian packages, or explains what to install.
apt_install() {
	is_root || die "missing package(s) $*: run 'apt-get install $*' as root"
	log "installing $*"
	local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends install "$@")
	"${apt[@]}" >&2 || { apt-get -q update >&2 && "${apt[@]}" >&2; } || die "cannot install $*"
}

# need makes sure command $1 exists, installing Debian package $2 if not.
need() {
	command -v "$1" >/dev/null || apt_install "$2"
	command -v "$1" >/dev/null || die "$1 not found after installing $2"
}

need qemu-system-x86_64 qemu-system-x86
need cpio cpio
need dpkg-deb dpkg
need gzip gzip
need timeout coreutils
command -v "$GO" >/dev/null || die "$GO not found: put the Go toolchain on PATH or set GO"
busybox=${VMTEST_BUSYBOX:-/bin/busybox}
if [ -z "${VMTEST_BUSYBOX:-}" ] && [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" != "install ok installed" ]; then
	apt_install busybox-static
fi
[ -x "$busybox" ] || die "$busybox not found: install busybox-static"

# kernel prints the path of a cached vmlinuz of the newest Debian 6.1 cloud kernel.
kernel() {
	if [ -n "${VMTEST_KERNEL:-}" ]; then
		echo "$VMTEST_KERNEL"
		return
	fi
	mkdir -p "$cache"
	local pkg ver out tmp deb
	newest() {
		apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$' |
			awk '{print $1}' | sort -V | tail -n1
	}
	pkg=$(newest)
	if [ -z "$pkg" ] && is_root; then
		apt-get -q update >&2
		pkg=$(newest)
	fi
	[ -n "$pkg" ] || die "no linux-image-6.1.0-*-cloud-amd64-unsigned package: run 'apt-get update' as root"
	ver=$(apt-cache policy "$pkg" | awk '$1 == "Candidate:" {print $2}')
	out=$cache/${pkg}_${ver}.vmlinuz
	if [ ! -s "$out" ]; then
		log "downloading $pkg $ver"
		rm -f "$cache"/*.deb
		dl() { (cd "$cache" && apt-get -q -o APT::Sandbox::User="$(id -un)" download "$pkg" >&2); }
		dl || { is_root && apt-get -q update >&2 && dl; } || die "cannot download $pkg"
		deb=$(ls "$cache"/*.deb)
		tmp=$(mktemp -d "$cache/x.XXXXXX")
		dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*'
		mv "$tmp"/boot/vmlinuz-* "$out"
		rm -rf "$tmp" "$deb"
	fi
	echo "$out"
}

t0=$(date +%s%N)
vmlinuz=$(kernel)

work=${VMTEST_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/nettrace-vmtest.XXXXXX")}
root=$work/root
rm -rf "$root" "$work/out"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc,vmtest/bin,vmtest/pkg} "$work/out"

# Build one test binary per package with tests.
cd "$moddir"
if [ $# -eq 0 ]; then
	for d in internal tracers cmd; do
		if [ -d "$d" ]; then set -- "$@" "./$d/..."; fi
	done
fi
[ $# -gt 0 ] || die "no packages to test in $moddir"
mod=$("$GO" list -m)
pkgs=() names=()
while read -r imp dir tests; do
	if [ "$tests" = 0 ]; then
		log "skipping $imp: no test files"
		continue
	fi
	name=${imp#"$mod"/}
	[ "$imp" != "$mod" ] || name=${mod##*/}
	name=${name//[\/.]/_}
	CGO_ENABLED=0 "$GO" test -c -o "$root/vmtest/bin/$name.test" "$imp"
	mkdir -p "$root/vmtest/pkg/$name"
	if [ -d "$dir/testdata" ]; then cp -rL "$dir/testdata" "$root/vmtest/pkg/$name/"; fi
	pkgs+=("$imp")
	names+=("$name")
	echo "$name" >>"$root/vmtest/tests"
done < <("$GO" list -f '{{.ImportPath}} {{.Dir}} {{if or .TestGoFiles .XTestGoFiles}}1{{else}}0{{end}}' "$@")
[ ${#pkgs[@]} -gt 0 ] || die "no packages with tests in $*"
bin=
if [ -d cmd/nettrace ]; then
	CGO_ENABLED=0 "$GO" build -o "$root/bin/nettrace" ./cmd/nettrace
	bin=/bin/nettrace
fi

# The C test programs (testutil.CProgram), built static: the VM has no
# compiler. Each line of spin.variants is "NAME HOST-FLAGS | STATIC-FLAGS".
cbin=
variants=$moddir/tracers/profile/testdata/spin.variants
if [ -f "$variants" ]; then
	if is_root; then
		need gcc gcc
		case $(gcc -print-file-name=libc.a) in /*) ;; *) apt_install libc6-dev ;; esac
	fi
	if command -v gcc >/dev/null; then
		mkdir -p "$root/vmtest/cbin"
		while IFS='|' read -r v static; do
			read -r v _ <<<"$v"
			case "$v" in '' | '#'*) continue ;; esac
			read -ra static <<<"$static" # no globbing: nettrace_* is for ld
			[ ${#static[@]} -gt 0 ] || die "$variants: no static flags for $v"
			gcc -O2 -fno-omit-frame-pointer -o "$root/vmtest/cbin/spin-$v" "${variants%/*}/spin.c" "${static[@]}" ||
				die "cannot build the static C test program spin-$v: install gcc and libc6-dev"
		done <"$variants"
		cbin=/vmtest/cbin
	else
		log "no gcc: the C test programs are not built (their tests skip in the VM)"
	fi
fi

# Environment of the tests, as sh assignments.
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
	if [ -n "${CI+x}" ]; then echo "export CI=$(q "$CI")"; fi
	while read -r v; do
		case "$v" in
		NETTRACE_BIN | NETTRACE_EXPECT_TIER | NETTRACE_TESTDATA_BIN) ;; # they describe the host, not the VM
		*) echo "export $v=$(q "${!v}")" ;;
		esac
	done < <(compgen -e | grep '^NETTRACE_' || true)
	# The tier Debian's 6.1 kernel must give (VMTEST_EXPECT_TIER= to check none).
	echo "export NETTRACE_EXPECT_TIER=$(q "${VMTEST_EXPECT_TIER-fentry}")"
	echo "export NETTRACE_VMTEST=1"
	if [ -n "$bin" ]; then echo "export NETTRACE_BIN=$bin"; fi
	if [ -n "$cbin" ]; then echo "export NETTRACE_TESTDATA_BIN=$cbin"; fi
	echo "VMTEST_ARGS=$(q "${VMTEST_ARGS:-}") VMTEST_DEADLINE=$((timeout_s * 9 / 10))"
} >"$root/vmtest/env"

cp "$busybox" "$root/bin/busybox"
install -m 0755 "$here/vmtest/init" "$root/init"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$work/initramfs.gz"

console=$work/console.log
log "booting $(basename "$vmlinuz") with ${#pkgs[@]} test binaries (console: $console)"
qrc=0 t1=$(date +%s%N)
timeout -k 10 "$timeout_s" qemu-system-x86_64 -nographic -no-reboot -m 2G -smp 2 -accel "tcg,thread=${VMTEST_TCG_THREAD:-single}" -cpu max -nic none \
	-kernel "$vmlinuz" -initrd "$work/initramfs.gz" \
	-append "console=ttyS0 panic=-1 loglevel=${VMTEST_LOGLEVEL:-4} mitigations=off" \
	</dev/null >"$console" 2>&1 || qrc=$?
sed -i 's/\r$//' "$console"
t2=$(date +%s%N)
[ "$qrc" != 124 ] || log "qemu killed after ${timeout_s}s (VMTEST_TIMEOUT)"

# Split the console into out/NAME.log and out/NAME.rc ("RC SECS").
awk -v out="$work/out" '
	match($0, /@@VMTEST BEGIN [^ ]+/) {
		name = substr($0, RSTART + 15, RLENGTH - 15); file = out "/" name ".log"; printf "" >file; next
	}
	match($0, /@@VMTEST END [^ ]+ rc=[0-9]+ secs=[0-9.]+/) {
		if (RSTART > 1) print substr($0, 1, RSTART - 1) >file
		split(substr($0, RSTART, RLENGTH), f, /[ =]/); print f[5], f[7] >(out "/" f[3] ".rc")
		close(file); file = ""; next
	}
	file != "" { print >file }
' "$console"

booted=$(grep -o '@@VMTEST BOOTED.*' "$console" || true)
fail=0 missing=0 shown=0 passed=0
for i in "${!pkgs[@]}"; do
	name=${names[$i]}
	if [ -f "$work/out/$name.rc" ]; then
		read -r rc secs <"$work/out/$name.rc"
		if [ "$rc" = 0 ]; then
			[ "${VMTEST_QUIET:-}" = 1 ] || cat "$work/out/$name.log"
			printf 'ok   %s  (%ss)\n' "${pkgs[$i]}" "$secs"
			passed=$((passed + 1))
			continue
		fi
		cat "$work/out/$name.log"
		printf 'FAIL %s  (%ss, exit %s)\n' "${pkgs[$i]}" "$secs" "$rc"
	elif [ -f "$work/out/$name.log" ]; then
		cat "$work/out/$name.log"
		printf 'FAIL %s  (no result: the VM crashed or timed out)\n' "${pkgs[$i]}"
		shown=1
	else
		printf 'FAIL %s  (not run)\n' "${pkgs[$i]}"
		missing=1
	fi
	fail=$((fail + 1))
done
# Show the end of the console unless a crash is already in a package's output.
if [ -z "$booted" ] || { [ "$missing" = 1 ] && [ "$shown" = 0 ]; }; then
	[ -n "$booted" ] || log "the kernel never reached /init"
	log "last console lines ($console):"
	tail -n 40 "$console" >&2
fi
if [ -n "$booted" ]; then
	kver=${booted#*kernel=} done=$(grep -o '@@VMTEST DONE uptime=[0-9.]*' "$console" || true)
	log "kernel ${kver%% *}: userspace after ${booted##*uptime=}s, tests done after ${done#*=}s (guest clock)"
fi
log "wall time: build $(((t1 - t0) / 1000000000))s, VM $(((t2 - t1) / 1000000000))s"
echo "vmtest: $passed passed, $fail failed"
if [ "$fail" != 0 ] || [ -z "$booted" ]; then
	log "work directory kept: $work"
	exit 1
fi
if [ "${VMTEST_KEEP:-}" != 1 ] && [ -z "${VMTEST_WORK:-}" ]; then rm -rf "$work"; fi
