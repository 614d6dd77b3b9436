# shellcheck shell=bash
# debian-apt.sh: a private apt configuration for another Debian suite or
# architecture, built from the URIs of this machine's own apt sources, so
# that the machine's sources and state stay as they are and no package host
# is written into the repository. Source it, then:
#
#   debian_apt_init DIR SUITE [ARCH]   # writes DIR/{sources.list.d,lists,...}, runs apt-get update once a day
#   debian_apt apt-get|apt-cache ...   # runs apt with the private configuration
#
# The machine's sources name a main archive URI (suites like bookworm,
# bookworm-updates) and a security one (suites ending in -security); the
# private list takes SUITE and SUITE-updates from the first and
# SUITE-security from the second, with the machine's Signed-By keyring.

# debian_apt_uris prints "main URI", "security URI" and "keyring PATH"
# lines from /etc/apt/sources.list and /etc/apt/sources.list.d.
debian_apt_uris() {
	local f
	{
		for f in /etc/apt/sources.list.d/*.sources; do
			[ -r "$f" ] || continue
			# deb822 stanzas: URIs/Suites/Signed-By fields, blank-line separated.
			awk '
				function flush() {
					if (uris != "") {
						kind = (suites ~ /-security/) ? "security" : "main"
						n = split(uris, u, /[ \t]+/)
						for (i = 1; i <= n; i++) if (u[i] != "") print kind, u[i]
						if (key != "") print "keyring", key
					}
					uris = suites = key = ""
				}
				/^[ \t]*#/ { next }
				/^[ \t]*$/ { flush(); next }
				tolower($1) == "uris:" { sub(/^[^:]*:[ \t]*/, ""); uris = $0 }
				tolower($1) == "suites:" { sub(/^[^:]*:[ \t]*/, ""); suites = $0 }
				tolower($1) == "signed-by:" { sub(/^[^:]*:[ \t]*/, ""); key = $0 }
				END { flush() }
			' "$f"
		done
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
			[ -r "$f" ] || continue
			# deb [options] URI SUITE COMPONENTS...
			awk '$1 == "deb" {
				i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
				print (($(i + 1) ~ /-security/) ? "security" : "main"), $i
			}' "$f"
		done
	} | awk '!seen[$0]++'
}

# debian_apt_init DIR SUITE [ARCH] prepares the private configuration in DIR
# and refreshes its package lists when they are older than a day.
debian_apt_init() {
	local dir=$1 suite=$2 arch=${3:-$(dpkg --print-architecture)} main security keyring
	main=$(debian_apt_uris | awk '$1 == "main" { print $2; exit }')
	security=$(debian_apt_uris | awk '$1 == "security" { print $2; exit }')
	keyring=$(debian_apt_uris | awk '$1 == "keyring" { print $2; exit }')
	[ -n "$main" ] || {
		echo "debian-apt: no Debian archive URI in /etc/apt/sources.list or /etc/apt/sources.list.d" >&2
		return 1
	}
	keyring=${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
	DEBIAN_APT_OPTS=(
		-o "Dir::Etc::SourceList=$dir/sources.list"
		-o "Dir::Etc::SourceParts=$dir/sources.list.d"
		-o "Dir::Etc::Preferences=$dir/preferences"
		-o "Dir::Etc::PreferencesParts=$dir/preferences.d"
		-o "Dir::State=$dir/state"
		-o "Dir::State::Lists=$dir/lists"
		-o "Dir::State::status=/dev/null"
		-o "Dir::Cache=$dir/cache"
		-o "APT::Architecture=$arch"
		-o "APT::Architectures=$arch"
		-o "APT::Sandbox::User=$(id -un)"
		-o "Debug::NoLocking=1"
	)
	mkdir -p "$dir"/{sources.list.d,preferences.d,state,lists/partial,cache/archives/partial}
	: >"$dir/sources.list"
	: >"$dir/preferences"
	{
		printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nArchitectures: %s\nSigned-By: %s\n' \
			"$main" "$suite" "$suite" "$arch" "$keyring"
		if [ -n "$security" ]; then
			printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nArchitectures: %s\nSigned-By: %s\n' \
				"$security" "$suite" "$arch" "$keyring"
		fi
	} >"$dir/sources.list.d/debian.sources.new"
	if ! cmp -s "$dir/sources.list.d/debian.sources.new" "$dir/sources.list.d/debian.sources"; then
		mv "$dir/sources.list.d/debian.sources.new" "$dir/sources.list.d/debian.sources"
		rm -f "$dir/updated"
	else
		rm -f "$dir/sources.list.d/debian.sources.new"
	fi
	if [ -z "$(find "$dir/updated" -mmin -1440 2>/dev/null)" ]; then
		apt-get "${DEBIAN_APT_OPTS[@]}" -qq update >&2 || return 1
		touch "$dir/updated"
	fi
}

# debian_apt CMD ARGS... runs apt-get or apt-cache on the private configuration.
debian_apt() {
	local cmd=$1
	shift
	"$cmd" "${DEBIAN_APT_OPTS[@]}" "$@"
}
