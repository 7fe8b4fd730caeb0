#!/usr/bin/env bash
# Fetch and unpack a pinned search server (see servers.txt), once:
#
#   tools/opensearch/install.sh [NAME]           # NAME from servers.txt, default opensearch
#   tools/opensearch/install.sh --check [NAME]   # print the home if installed, else fail
#
# Tests use --check: they never fetch (scripts/test.sh prepare does).
#
# prints the server's home directory (bin/, lib/, config/) on stdout; all
# else goes to stderr. The zip comes from Maven Central through mvn (into
# the local Maven repository), and is unpacked into .cache/ARTIFACT-VERSION
# under a lock (.cache/search-install.lock, flock), so parallel test
# binaries and scripts wait for each other. A stamp file in the home tells
# a complete install.
#
# OpenSearch and Elasticsearch refuse to run as root. When this runs as
# root, the server is meant to run as PTOP_SEARCH_USER (default nobody),
# which must be able to read the home: when .cache is out of its reach (a
# checkout under a private directory), the home goes to
# /var/tmp/ptop-search instead.
#
# Environment:
#   PTOP_SEARCH_CACHE  unpack under this directory instead of .cache
#   PTOP_SEARCH_USER   the unprivileged user the server runs as under root
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'install.sh: %s\n' "$*" >&2; }

check_only=false
if [[ ${1:-} == --check ]]; then
	check_only=true
	shift
fi
name=${1:-opensearch}
coords=$(awk -v n="$name" '$1 == n { print $2 }' "$here/servers.txt")
[[ -n $coords ]] || die "unknown server \"$name\"; known: $(awk '!/^#/ && NF { printf "%s ", $1 }' "$here/servers.txt")"
IFS=: read -r _ artifact version <<<"$coords"

# can_reach DIR: true unless running as root and the run user cannot enter DIR.
can_reach() {
	[[ $EUID -ne 0 ]] && return 0
	local user=${PTOP_SEARCH_USER:-nobody}
	id -u "$user" >/dev/null 2>&1 || die "user $user does not exist (set PTOP_SEARCH_USER to an unprivileged user)"
	setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --clear-groups test -x "$1" 2>/dev/null
}

cache=${PTOP_SEARCH_CACHE:-$root/.cache}
mkdir -p "$cache"
if ! can_reach "$cache"; then
	cache=/var/tmp/ptop-search
	mkdir -p "$cache"
	chmod 0755 "$cache"
fi
home=$cache/$artifact-$version
stamp=$home/.ptop-installed

installed() { [[ -f $stamp && $(<"$stamp") == "$coords" ]]; }

if installed; then
	printf '%s\n' "$home"
	exit 0
fi
$check_only && die "$name is not installed in $home: run scripts/test.sh prepare (fetches it from Maven Central)"

command -v java >/dev/null || die "java not found in PATH: $name needs a Java 17 runtime (Debian: apt-get install openjdk-17-jre-headless)"
command -v mvn >/dev/null || die "mvn not found in PATH: it fetches $name from Maven Central (Debian: apt-get install maven)"
command -v unzip >/dev/null || die "unzip not found in PATH (Debian: apt-get install unzip)"

exec 9>"$cache/search-install.lock"
if command -v flock >/dev/null; then flock 9; fi
if installed; then # another process installed it while we waited
	printf '%s\n' "$home"
	exit 0
fi

tmp=$(mktemp -d "$cache/.install-$artifact-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
log "fetching $coords:zip with mvn"
# (Maven 3.8 prints colour codes even in batch mode: strip them.)
mvn -B -q dependency:copy -Dartifact="$coords:zip" -DoutputDirectory="$tmp" 2>&1 |
	sed $'s/\x1b\\[[0-9;]*m//g' >&2 ||
	die "mvn could not fetch $coords:zip"
log "unpacking into $home"
unzip -q "$tmp/$artifact-$version.zip" -d "$tmp/unpacked" || die "unzip $artifact-$version.zip failed"
[[ -x $tmp/unpacked/$artifact-$version/bin/$artifact ]] || die "$artifact-$version.zip has no bin/$artifact"
rm -rf "$home"
mv "$tmp/unpacked/$artifact-$version" "$home"
chmod 0755 "$home"
printf '%s\n' "$coords" >"$stamp"
log "$name $version installed in $((SECONDS - start)) s"
printf '%s\n' "$home"
