#!/usr/bin/env bash
# vmtest.sh runs Go test binaries as root inside Debian's stock cloud
# kernels under qemu TCG: one boot per kernel of the matrix, every test
# binary in each, so that every tracer is proven on the kernels servers run
# (and in the fentry and kprobe tiers, which the development kernel lacks).
#
# Usage: scripts/vmtest.sh [PKG ...]
#   PKG defaults to every package with tests under ./internal/... ./tracers/...
#   ./cmd/... of the module in $VMTEST_MODDIR (default: this repository).
# Environment:
#   VMTEST_KERNELS  Debian kernel lines to boot (default "5.10 6.1 6.12" on
#                   amd64, "6.1" on arm64): bullseye's, bookworm's and
#                   trixie's cloud kernels, each the newest build of its line
#                   (security suites included). Downloaded through a private
#                   apt configuration built from the machine's own sources
#                   (scripts/debian-apt.sh) and cached.
#   VMTEST_ARCH     amd64 (default) or arm64 (qemu-system-aarch64, GOARCH=arm64)
#   VMTEST_KERNEL   a kernel image to boot instead of the matrix
#   VMTEST_JOBS     VMs booted at once (default 1; each is one host thread)
#   VMTEST_ARGS     extra test binary flags, e.g. '-test.run TestAttach'
#   VMTEST_TIMEOUT  seconds before a VM is killed (default 900)
#   VMTEST_QUIET=1  print the -test.v output of failed packages only
#   VMTEST_MODDIR   module to build the packages from
#   VMTEST_KEEP=1   keep the work directory after a successful run
#   VMTEST_NOBTF    file of "PKG TEST-REGEXP" lines (default
#                   scripts/vmtest/nobtf.list; "" for none) for a second
#                   pass in every kernel after the first: the kernel's BTF
#                   copied to /tmp/vmlinux.btf and hidden (an empty tmpfs
#                   over /sys/kernel/btf), NETTRACE_BTF=/tmp/vmlinux.btf,
#                   NETTRACE_EXPECT_TIER=kprobe, NETTRACE_VMTEST_NOBTF=1;
#                   results read "[K nobtf]". Only packages named on the
#                   command line (or by default) run in it.
#   VMTEST_PASSES   "normal nobtf" (default), or one of them
#   CI and NETTRACE_* are passed to the tests; NETTRACE_VMTEST=1,
#   NETTRACE_BIN, NETTRACE_TESTDATA_BIN (the static C test programs),
#   NETTRACE_VMTEST_KERNEL (the line booted) and NETTRACE_EXPECT_TIER (from
#   VMTEST_EXPECT_TIER, default the best tier the kernel gives: fentry for
#   every x86-64 kernel of the matrix, kprobe for arm64 before 6.4; the
#   host's value describes the host's kernel) are set.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
moddir=${VMTEST_MODDIR:-$(dirname "$here")}
timeout_s=${VMTEST_TIMEOUT:-900}
arch=${VMTEST_ARCH:-amd64}
jobs=${VMTEST_JOBS:-1}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/nettrace/vmtest
GO=${GO:-go}
# shellcheck source=scripts/debian-apt.sh
. "$here/debian-apt.sh"

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

case $arch in
amd64)
	qemu=qemu-system-x86_64 goarch=amd64 cc=gcc
	need qemu-system-x86_64 qemu-system-x86
	default_kernels="5.10 6.1 6.12"
	;;
arm64)
	qemu=qemu-system-aarch64 goarch=arm64 cc=aarch64-linux-gnu-gcc
	need qemu-system-aarch64 qemu-system-arm
	default_kernels="6.1"
	;;
*) die "VMTEST_ARCH=$arch: want amd64 or arm64" ;;
esac
need cpio cpio
need dpkg-deb dpkg
need gzip gzip
need timeout coreutils
command -v "$GO" >/dev/null || die "$GO not found: put the Go toolchain on PATH or set GO"

# suite_of names the Debian suite whose cloud kernel is line $1.
suite_of() {
	case $1 in
	5.10) echo bullseye ;;
	6.1) echo bookworm ;;
	6.12) echo trixie ;;
	*) log "no Debian suite known for kernel line $1 (want 5.10, 6.1 or 6.12)"; return 1 ;;
	esac
}

# deb_fetch SUITE ARCH REGEX prints the path of the cached .deb of the newest
# package whose name matches REGEX in SUITE (security suite included) that
# the archive serves (a list can name a build its pool no longer has).
deb_fetch() {
	local suite=$1 a=$2 re=$3 pkg ver deb
	debian_apt_init "$cache/apt/$suite-$a" "$suite" "$a" || { log "cannot read Debian $suite's package lists"; return 1; }
	for pkg in $(debian_apt apt-cache search --names-only "$re" | awk '{print $1}' | grep -E "$re" | sort -rV); do
		ver=$(debian_apt apt-cache policy "$pkg" | awk '$1 == "Candidate:" {print $2}')
		deb=$cache/${pkg}_${ver//:/%3a}_$a.deb
		# A build the pool did not serve is not asked for again until the
		# lists are refreshed.
		if [ "$deb.missing" -nt "$cache/apt/$suite-$a/updated" ]; then continue; fi
		if [ ! -s "$deb" ]; then
			log "downloading $pkg $ver ($suite, $a)"
			mkdir -p "$cache/dl"
			rm -f "$cache"/dl/*.deb
			if ! (cd "$cache/dl" && debian_apt apt-get -qq download "$pkg=$ver" >&2); then
				log "$pkg $ver cannot be downloaded: trying the build before it"
				touch "$deb.missing"
				continue
			fi
			mv "$cache"/dl/*.deb "$deb"
		fi
		echo "$deb"
		return 0
	done
	log "no package matching $re that downloads from Debian $suite ($a)"
	return 1
}

# kernel_modules LINE prints a directory holding the kernel's inet_diag and
# tcp_diag modules, uncompressed, in the order to load them: sock_diag
# netlink for TCP, which a full system loads on demand (the initramfs has no
# modprobe tree). Used by the socket table without iter/tcp.
kernel_modules() {
	local line=$1 suite re deb out tmp m
	suite=$(suite_of "$line") || return 1
	re="^linux-image-${line//./\\.}\\.[0-9]+(-[0-9]+|\\+deb[0-9]+)-cloud-$arch-unsigned\$"
	deb=$(deb_fetch "$suite" "$arch" "$re") || return 1
	out=${deb%.deb}.modules
	if [ ! -s "$out/2-tcp_diag.ko" ]; then
		tmp=$(mktemp -d "$cache/x.XXXXXX")
		dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards '*/kernel/net/ipv4/inet_diag.ko*' '*/kernel/net/ipv4/tcp_diag.ko*'
		mkdir -p "$out"
		for m in inet_diag:1 tcp_diag:2; do
			f=$(find "$tmp" -name "${m%:*}.ko*" | head -n1)
			[ -n "$f" ] || { rm -rf "$tmp"; log "no ${m%:*} module in $deb"; return 1; }
			case $f in
			*.xz) xz -dc "$f" >"$out/${m#*:}-${m%:*}.ko" ;;
			*.zst) zstd -dc "$f" >"$out/${m#*:}-${m%:*}.ko" ;;
			*) cp "$f" "$out/${m#*:}-${m%:*}.ko" ;;
			esac
		done
		rm -rf "$tmp"
	fi
	echo "$out"
}

# kernel_image LINE prints the path of the cached kernel image of Debian's
# newest cloud kernel of that line (e.g. 6.1 -> linux-image-6.1.0-57-cloud-amd64-unsigned).
kernel_image() {
	local line=$1 suite re deb out tmp
	suite=$(suite_of "$line") || return 1
	re="^linux-image-${line//./\\.}\\.[0-9]+(-[0-9]+|\\+deb[0-9]+)-cloud-$arch-unsigned\$"
	deb=$(deb_fetch "$suite" "$arch" "$re") || return 1
	out=${deb%.deb}.vmlinuz
	if [ ! -s "$out" ]; then
		tmp=$(mktemp -d "$cache/x.XXXXXX")
		dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*'
		mv "$tmp"/boot/vmlinuz-* "$out"
		rm -rf "$tmp"
	fi
	echo "$out"
}

t0=$(date +%s%N)
if [ -n "${VMTEST_KERNEL:-}" ]; then
	kernels=(custom)
else
	read -ra kernels <<<"${VMTEST_KERNELS:-$default_kernels}"
fi
declare -A image modules
for k in "${kernels[@]}"; do
	if [ "$k" = custom ]; then
		image[$k]=$VMTEST_KERNEL
	else
		image[$k]=$(kernel_image "$k") || die "no Debian $k kernel to boot"
		modules[$k]=$(kernel_modules "$k") || log "$k: no sock_diag modules: the socket table's sock_diag tests fail"
	fi
done
passes=${VMTEST_PASSES:-normal nobtf}

# busybox: the host's for amd64, Debian's static arm64 build otherwise.
busybox=${VMTEST_BUSYBOX:-}
if [ -z "$busybox" ]; then
	if [ "$arch" = amd64 ]; then
		busybox=/bin/busybox
		if [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" != "install ok installed" ]; then
			apt_install busybox-static
		fi
	else
		busybox=$cache/busybox-static-arm64
		if [ ! -s "$busybox" ]; then
			deb=$(deb_fetch bookworm arm64 '^busybox-static$') || die "cannot fetch Debian's arm64 busybox-static"
			tmp=$(mktemp -d "$cache/x.XXXXXX")
			dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" ./bin/busybox
			mv "$tmp/bin/busybox" "$busybox"
			rm -rf "$tmp"
		fi
	fi
fi
[ -x "$busybox" ] || die "$busybox not found: install busybox-static"

work=${VMTEST_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/nettrace-vmtest.XXXXXX")}
root=$work/root
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc,vmtest/bin,vmtest/pkg}

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
	CGO_ENABLED=0 GOARCH=$goarch "$GO" test -c -o "$root/vmtest/bin/$name.test" "$imp"
	mkdir -p "$root/vmtest/pkg/$name"
	if [ -d "$dir/testdata" ]; then cp -rL "$dir/testdata" "$root/vmtest/pkg/$name/"; fi
	pkgs+=("$imp")
	names+=("$name")
	echo "$name" >>"$root/vmtest/tests"
done < <("$GO" list -f '{{.ImportPath}} {{.Dir}} {{if or .TestGoFiles .XTestGoFiles}}1{{else}}0{{end}}' "$@")
[ ${#pkgs[@]} -gt 0 ] || die "no packages with tests in $*"
case " $passes " in *" normal "*) ;; *) : >"$root/vmtest/tests" ;; esac

# The second pass: each listed package's tests without the kernel's BTF.
nobtf_list=${VMTEST_NOBTF-$here/vmtest/nobtf.list}
nobtf_names=() nobtf_pkgs=()
if [ -n "$nobtf_list" ] && [[ " $passes " = *" nobtf "* ]]; then
	[ -f "$nobtf_list" ] || die "VMTEST_NOBTF=$nobtf_list: no such file"
	while read -r p re; do
		case "$p" in '' | '#'*) continue ;; esac
		p=${p#./}
		for i in "${!pkgs[@]}"; do
			if [ "${pkgs[$i]}" = "$mod/$p" ] || { [ "$p" = . ] && [ "${pkgs[$i]}" = "$mod" ]; }; then
				echo "${names[$i]} $re" >>"$root/vmtest/nobtf"
				nobtf_names+=("${names[$i]}")
				nobtf_pkgs+=("${pkgs[$i]}")
			fi
		done
	done <"$nobtf_list"
fi
bin=
if [ -d cmd/nettrace ]; then
	CGO_ENABLED=0 GOARCH=$goarch "$GO" build -o "$root/bin/nettrace" ./cmd/nettrace
	bin=/bin/nettrace
fi

# The C test programs (testutil.CProgram), built static: the VM has no
# compiler. Each line of spin.variants is "NAME HOST-FLAGS | STATIC-FLAGS".
cbin=
variants=$moddir/tracers/profile/testdata/spin.variants
if [ -f "$variants" ]; then
	if is_root; then
		if [ "$arch" = amd64 ]; then
			need gcc gcc
			case $(gcc -print-file-name=libc.a) in /*) ;; *) apt_install libc6-dev ;; esac
		else
			need "$cc" gcc-aarch64-linux-gnu
			case $("$cc" -print-file-name=libc.a) in /*) ;; *) apt_install libc6-dev-arm64-cross ;; esac
		fi
	fi
	if command -v "$cc" >/dev/null; then
		mkdir -p "$root/vmtest/cbin"
		while IFS='|' read -r v static; do
			read -r v _ <<<"$v"
			case "$v" in '' | '#'*) continue ;; esac
			read -ra static <<<"$static" # no globbing: nettrace_* is for ld
			[ ${#static[@]} -gt 0 ] || die "$variants: no static flags for $v"
			"$cc" -O2 -fno-omit-frame-pointer -o "$root/vmtest/cbin/spin-$v" "${variants%/*}/spin.c" "${static[@]}" ||
				die "cannot build the static C test program spin-$v: install $cc and its libc6-dev"
		done <"$variants"
		cbin=/vmtest/cbin
	else
		log "no $cc: the C test programs are not built (their tests skip in the VM)"
	fi
fi

# Environment of the tests, as sh assignments (the kernel line is added per boot).
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
	if [ -n "${CI+x}" ]; then echo "export CI=$(q "$CI")"; fi
	while read -r v; do
		case "$v" in
		NETTRACE_BIN | NETTRACE_EXPECT_TIER | NETTRACE_TESTDATA_BIN | NETTRACE_VMTEST_KERNEL) ;; # they describe the host, not the VM
		*) echo "export $v=$(q "${!v}")" ;;
		esac
	done < <(compgen -e | grep '^NETTRACE_' || true)
	echo "export NETTRACE_VMTEST=1"
	if [ -n "$bin" ]; then echo "export NETTRACE_BIN=$bin"; fi
	if [ -n "$cbin" ]; then echo "export NETTRACE_TESTDATA_BIN=$cbin"; fi
	echo "VMTEST_ARGS=$(q "${VMTEST_ARGS:-}") VMTEST_DEADLINE=$((timeout_s * 9 / 10))"
} >"$work/env"

cp "$busybox" "$root/bin/busybox"
install -m 0755 "$here/vmtest/init" "$root/init"
t1=$(date +%s%N)

# expect_tier K names the best tier Debian's kernel K gives: fentry on
# x86-64; on arm64 BPF trampolines attach from 6.4 (ftrace direct calls),
# so 6.1 gives kprobes.
expect_tier() {
	case $arch/$1 in
	arm64/5.10 | arm64/6.1) echo kprobe ;;
	*/custom) echo "" ;;
	*) echo fentry ;;
	esac
}

# boot K runs every test binary in kernel K: its initramfs is the common
# root plus /vmtest/env; the console is split into $work/K/out/NAME.{log,rc}.
boot() {
	local k=$1 kw=$work/$1 qrc=0 b0 b1
	rm -rf "$kw"
	mkdir -p "$kw/out" "$kw/extra/vmtest"
	{
		cat "$work/env"
		echo "export NETTRACE_VMTEST_KERNEL=$(q "$k")"
		echo "export NETTRACE_EXPECT_TIER=$(q "${VMTEST_EXPECT_TIER-$(expect_tier "$k")}")"
	} >"$kw/extra/vmtest/env"
	if [ -n "${modules[$k]:-}" ]; then
		mkdir -p "$kw/extra/vmtest/modules"
		cp "${modules[$k]}"/*.ko "$kw/extra/vmtest/modules/"
	fi
	{
		(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet)
		(cd "$kw/extra" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet)
	} | gzip -1 >"$kw/initramfs.gz"
	local console=$kw/console.log machine
	if [ "$arch" = amd64 ]; then
		machine=(-accel "tcg,thread=${VMTEST_TCG_THREAD:-single}" -cpu max -append "console=ttyS0 panic=-1 loglevel=${VMTEST_LOGLEVEL:-4} mitigations=off")
	else
		machine=(-M virt -accel "tcg,thread=${VMTEST_TCG_THREAD:-single}" -cpu max -append "console=ttyAMA0 panic=-1 loglevel=${VMTEST_LOGLEVEL:-4}")
	fi
	log "booting $k ($(basename "${image[$k]}")) with ${#pkgs[@]} test binaries (console: $console)"
	b0=$(date +%s)
	timeout -k 10 "$timeout_s" "$qemu" -nographic -no-reboot -m 2G -smp 2 -nic none "${machine[@]}" \
		-kernel "${image[$k]}" -initrd "$kw/initramfs.gz" </dev/null >"$console" 2>&1 || qrc=$?
	b1=$(date +%s)
	sed -i 's/\r$//' "$console"
	[ "$qrc" != 124 ] || echo "qemu killed after ${timeout_s}s (VMTEST_TIMEOUT)" >>"$kw/notes"
	echo "$((b1 - b0))" >"$kw/secs"
	awk -v out="$kw/out" '
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
}

# report K prints kernel K's results and returns non-zero when one failed.
report() {
	local k=$1 kw=$work/$1 fail=0 missing=0 shown=0 passed=0 name rc secs booted
	local console=$kw/console.log
	booted=$(grep -o '@@VMTEST BOOTED.*' "$console" || true)
	for i in "${!pkgs[@]}"; do
		[[ " $passes " = *" normal "* ]] || break
		name=${names[$i]}
		if [ -f "$kw/out/$name.rc" ]; then
			read -r rc secs <"$kw/out/$name.rc"
			if [ "$rc" = 0 ]; then
				[ "${VMTEST_QUIET:-}" = 1 ] || cat "$kw/out/$name.log"
				printf 'ok   %s  [%s] (%ss)\n' "${pkgs[$i]}" "$k" "$secs"
				passed=$((passed + 1))
				continue
			fi
			cat "$kw/out/$name.log"
			printf 'FAIL %s  [%s] (%ss, exit %s)\n' "${pkgs[$i]}" "$k" "$secs" "$rc"
		elif [ -f "$kw/out/$name.log" ]; then
			cat "$kw/out/$name.log"
			printf 'FAIL %s  [%s] (no result: the VM crashed or timed out)\n' "${pkgs[$i]}" "$k"
			shown=1
		else
			printf 'FAIL %s  [%s] (not run)\n' "${pkgs[$i]}" "$k"
			missing=1
		fi
		fail=$((fail + 1))
	done
	[ ! -f "$kw/notes" ] || log "$k: $(cat "$kw/notes")"
	if [ -z "$booted" ] || { [ "$missing" = 1 ] && [ "$shown" = 0 ]; }; then
		[ -n "$booted" ] || log "$k: the kernel never reached /init"
		log "$k: last console lines ($console):"
		tail -n 40 "$console" >&2
	fi
	if [ -n "$booted" ]; then
		local kver=${booted#*kernel=} done
		done=$(grep -o '@@VMTEST DONE uptime=[0-9.]*' "$console" || true)
		log "kernel ${kver%% *} [$k]: userspace after ${booted##*uptime=}s, tests done after ${done#*=}s (guest clock), VM $(cat "$kw/secs")s wall"
	fi
	for i in "${!nobtf_names[@]}"; do
		name=${nobtf_names[$i]}@nobtf
		if [ -f "$kw/out/$name.rc" ]; then
			read -r rc secs <"$kw/out/$name.rc"
			if [ "$rc" = 0 ]; then
				[ "${VMTEST_QUIET:-}" = 1 ] || cat "$kw/out/$name.log"
				printf 'ok   %s  [%s nobtf] (%ss)\n' "${nobtf_pkgs[$i]}" "$k" "$secs"
				passed=$((passed + 1))
				continue
			fi
			cat "$kw/out/$name.log"
			printf 'FAIL %s  [%s nobtf] (%ss, exit %s)\n' "${nobtf_pkgs[$i]}" "$k" "$secs" "$rc"
		elif [ -f "$kw/out/$name.log" ]; then
			cat "$kw/out/$name.log"
			printf 'FAIL %s  [%s nobtf] (no result: the VM crashed or timed out)\n' "${nobtf_pkgs[$i]}" "$k"
		else
			printf 'FAIL %s  [%s nobtf] (not run)\n' "${nobtf_pkgs[$i]}" "$k"
		fi
		fail=$((fail + 1))
	done
	echo "vmtest [$k]: $passed passed, $fail failed"
	[ "$fail" = 0 ] && [ -n "$booted" ]
}

pids=()
for k in "${kernels[@]}"; do
	while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
	boot "$k" &
	pids+=($!)
done
wait
t2=$(date +%s%N)

status=0
for k in "${kernels[@]}"; do
	report "$k" || status=1
done
log "wall time: build $(((t1 - t0) / 1000000000))s, VMs $(((t2 - t1) / 1000000000))s (${kernels[*]}, $jobs at once)"
if [ "$status" != 0 ]; then
	log "work directory kept: $work"
	exit 1
fi
if [ "${VMTEST_KEEP:-}" != 1 ] && [ -z "${VMTEST_WORK:-}" ]; then rm -rf "$work"; fi
