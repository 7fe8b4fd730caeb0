#!/usr/bin/env bash
# Fetch the pinned Apache Kafka broker (tools/kafka/pom.xml), once:
#
#   tools/kafka/install.sh           # install if missing; print its home
#   tools/kafka/install.sh --check   # print the home if installed, else fail
#
# Tests use --check: they never fetch (scripts/test.sh prepare does).
#
# prints the broker's home directory on stdout (libs/ holds every jar; run
# it with java -cp 'HOME/libs/*'); all else goes to stderr. The jars come
# from Maven Central through mvn dependency:copy-dependencies (through the
# local Maven repository) into .cache/kafka-VERSION/libs, under a lock
# (.cache/kafka-install.lock, flock), so parallel test binaries and
# scripts wait for each other. A stamp file in the home, holding the
# sha256 of pom.xml, tells a complete install of this pom.
#
# Environment:
#   PTOP_KAFKA_CACHE  install under this directory instead of .cache
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'install.sh: %s\n' "$*" >&2; }

check_only=false
case ${1:-} in
--check) check_only=true ;;
"") ;;
*) die "usage: $0 [--check]" ;;
esac

pom=$here/pom.xml
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
[[ -n $version ]] || die "no <kafka.version> in $pom"
sum=$(sha256sum "$pom" | cut -d' ' -f1)

cache=${PTOP_KAFKA_CACHE:-$root/.cache}
home=$cache/kafka-$version
stamp=$home/.ptop-installed

installed() { [[ -f $stamp && $(<"$stamp") == "$sum" ]]; }

if installed; then
	printf '%s\n' "$home"
	exit 0
fi
$check_only && die "Kafka $version is not installed in $home: run scripts/test.sh prepare (fetches it from Maven Central)"

command -v java >/dev/null || die "java not found in PATH: Kafka needs a Java 17 runtime (Debian: apt-get install openjdk-17-jre-headless)"
command -v mvn >/dev/null || die "mvn not found in PATH: it fetches Kafka from Maven Central (Debian: apt-get install maven)"

mkdir -p "$cache"
exec 9>"$cache/kafka-install.lock"
if command -v flock >/dev/null; then flock 9; fi
if installed; then # another process installed it while we waited
	printf '%s\n' "$home"
	exit 0
fi

tmp=$(mktemp -d "$cache/.install-kafka-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
log "fetching Kafka $version and its dependencies with mvn"
# (Maven 3.8 prints colour codes even in batch mode: strip them.)
mvn -B -q -f "$pom" dependency:copy-dependencies -DoutputDirectory="$tmp/libs" 2>&1 |
	sed $'s/\x1b\\[[0-9;]*m//g' >&2 ||
	die "mvn could not fetch the jars of $pom"
[[ -f $tmp/libs/kafka_2.13-$version.jar ]] || die "mvn fetched no kafka_2.13-$version.jar"
rm -rf "$home"
mkdir -p "$home"
mv "$tmp/libs" "$home/libs"
printf '%s\n' "$sum" >"$stamp"
log "Kafka $version installed in $home in $((SECONDS - start)) s ($(find "$home/libs" -name '*.jar' | wc -l) jars)"
printf '%s\n' "$home"
