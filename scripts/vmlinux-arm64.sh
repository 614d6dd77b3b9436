#!/usr/bin/env bash
# Regenerate bpf/headers/vmlinux_arm64.h from the BTF of a Debian arm64 kernel.
#
# Works on any Debian-like amd64 host with apt, dpkg-deb, python3 and bpftool.
# It does not touch the host's apt state: a private arm64-only apt
# configuration (sources, lists) lives in the cache directory, so no
# `dpkg --add-architecture` is needed.
#
# The arm64 vmlinuz is a raw (possibly gzip-compressed) Image, not an ELF
# file, so there is no .BTF section header to read. The script scans the
# image for the BTF header (magic 0xeB9F, version 1, hdr_len 24), cuts the
# blob out using the lengths in that header and dumps it as C with bpftool.
#
# Environment:
#   SUITE   Debian suite to take the kernel from (default: bookworm)
#   FLAVOUR kernel flavour (default: arm64; cloud-arm64 is smaller but has fewer types)
#   PKG     exact package, e.g. linux-image-6.1.0-56-arm64-unsigned
#           (default: what linux-image-$FLAVOUR currently depends on)
#   OUT     output header (default: bpf/headers/vmlinux_arm64.h in the repo)
#
# Downloaded .debs are cached in ${XDG_CACHE_HOME:-$HOME/.cache}/nettrace/, so
# a rerun with the same PKG needs no network.
set -euo pipefail

suite=${SUITE:-bookworm}
flavour=${FLAVOUR:-arm64}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$repo/bpf/headers/vmlinux_arm64.h}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/nettrace
apt_root=$cache/apt-$suite-arm64

for tool in apt-get apt-cache dpkg-deb python3 bpftool; do
	command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

apt_opts=(
	-o "Dir::Etc::SourceList=$apt_root/sources.list"
	-o "Dir::Etc::SourceParts=$apt_root/sources.list.d"
	-o "Dir::Etc::Preferences=$apt_root/preferences"
	-o "Dir::Etc::PreferencesParts=$apt_root/preferences.d"
	-o "Dir::State=$apt_root/state"
	-o "Dir::State::Lists=$apt_root/lists"
	-o "Dir::State::status=/dev/null"
	-o "Dir::Cache=$apt_root/cache"
	-o "APT::Architecture=arm64"
	-o "APT::Architectures=arm64"
	-o "APT::Sandbox::User=root"
	-o "Debug::NoLocking=1"
)

apt_update() {
	mkdir -p "$apt_root"/{sources.list.d,preferences.d,state,lists/partial,cache/archives/partial}
	: >"$apt_root/sources.list"
	: >"$apt_root/preferences"
	cat >"$apt_root/sources.list.d/debian.sources" <<-EOF
		Types: deb
		URIs: http://deb.debian.org/debian
		Suites: $suite $suite-updates
		Components: main
		Architectures: arm64
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

		Types: deb
		URIs: http://deb.debian.org/debian-security
		Suites: $suite-security
		Components: main
		Architectures: arm64
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	apt-get "${apt_opts[@]}" -qq update
}

mkdir -p "$cache"
deb=
if [[ -n ${PKG:-} ]]; then
	deb=$(ls -1 "$cache/${PKG}"_*_arm64.deb 2>/dev/null | sort -V | tail -n 1 || true)
fi
if [[ -z $deb ]]; then
	apt_update
	pkg=${PKG:-}
	if [[ -z $pkg ]]; then
		signed=$(apt-cache "${apt_opts[@]}" depends "linux-image-$flavour" |
			awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
		[[ -n $signed ]] || { echo "cannot resolve linux-image-$flavour in $suite" >&2; exit 1; }
		pkg=$signed-unsigned
	fi
	version=$(apt-cache "${apt_opts[@]}" policy "$pkg" | awk '$1 == "Candidate:" { print $2 }')
	[[ -n $version && $version != "(none)" ]] || { echo "package $pkg not found in $suite" >&2; exit 1; }
	deb=$cache/${pkg}_${version//:/%3a}_arm64.deb
	if [[ ! -f $deb ]]; then
		(cd "$cache" && apt-get "${apt_opts[@]}" -qq download "$pkg=$version")
	fi
fi
[[ -f $deb ]] || { echo "download failed: $deb" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards './boot/vmlinuz-*'
vmlinuz=$(ls -1 "$work"/boot/vmlinuz-*)
kver=${vmlinuz##*/vmlinuz-}
pkgver=$(dpkg-deb -f "$deb" Package Version | awk '{ printf "%s%s", sep, $2; sep = " " }')

python3 - "$vmlinuz" "$work/vmlinux.btf" <<'EOF'
import gzip, struct, sys

src, dst = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()
if data[:2] == b"\x1f\x8b":
    data = gzip.decompress(data)
# struct btf_header: u16 magic 0xeB9F, u8 version 1, u8 flags 0, u32 hdr_len 24,
# u32 type_off, type_len, str_off, str_len (offsets relative to the header end).
magic = b"\x9f\xeb\x01\x00\x18\x00\x00\x00"
best = None
i = data.find(magic)
while i >= 0:
    type_off, type_len, str_off, str_len = struct.unpack_from("<4I", data, i + 8)
    end = i + 24 + max(type_off + type_len, str_off + str_len)
    if (type_off == 0 and str_off >= type_len and str_len > 0 and end <= len(data)
            and data[i + 24 + str_off] == 0 and data[end - 1] == 0):
        if best is None or end - i > best[1] - best[0]:
            best = (i, end)
    i = data.find(magic, i + 1)
if best is None:
    sys.exit(f"no BTF blob found in {src}")
with open(dst, "wb") as f:
    f.write(data[best[0]:best[1]])
print(f"BTF blob at offset {best[0]:#x}, {best[1] - best[0]} bytes", file=sys.stderr)
EOF

# Sanity checks: the blob must parse and be a full arm64 vmlinux BTF.
bpftool btf dump file "$work/vmlinux.btf" format c >"$work/vmlinux.h"
for want in 'struct sock' 'struct sk_buff' 'enum skb_drop_reason' 'struct user_pt_regs'; do
	grep -q "^$want {" "$work/vmlinux.h" || { echo "BTF lacks $want" >&2; exit 1; }
done
grep -A4 '^struct user_pt_regs {' "$work/vmlinux.h" | grep -q 'regs\[31\];' ||
	{ echo "struct user_pt_regs is not the arm64 layout" >&2; exit 1; }

{
	echo "/* Generated by scripts/vmlinux-arm64.sh from Debian $suite $pkgver (kernel $kver). */"
	cat "$work/vmlinux.h"
} >"$out"
echo "kernel $kver ($pkgver) -> $out ($(wc -c <"$out") bytes)"
