# shellcheck shell=bash
# Shared helpers for scripts/*.sh. Source it (it does not change shell options):
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# All messages go to stderr; stdout is left to the caller.

PTOP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PTOP_CACHE=$PTOP_ROOT/.cache

# tools/pouchdb holds the pinned pouchdb-server (package.json + package-lock.json).
# internal/testenv (Go) uses the same paths, stamp and lock file: keep them in sync.
POUCHDB_DIR=$PTOP_ROOT/tools/pouchdb
# PTOP_POUCHDB_BIN overrides the server binary (then nothing is installed).
if [[ ${PTOP_POUCHDB_BIN:-} == */* && ${PTOP_POUCHDB_BIN} != /* ]]; then
	PTOP_POUCHDB_BIN=$PWD/$PTOP_POUCHDB_BIN # the server runs in a scratch dir
fi
# shellcheck disable=SC2034 # used by the scripts that source this file
POUCHDB_BIN=${PTOP_POUCHDB_BIN:-$POUCHDB_DIR/node_modules/.bin/pouchdb-server}
# sha256 of the package-lock.json that node_modules was installed from.
POUCHDB_STAMP=$POUCHDB_DIR/node_modules/.ptop-lock-sha256
# flock(2)ed while npm ci runs, so parallel scripts and test binaries wait for each other.
POUCHDB_NPM_LOCK=$PTOP_CACHE/pouchdb-npm.lock

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# pouchdb_deps_fresh: true if node_modules was installed from the current lock file.
pouchdb_deps_fresh() {
	[[ -x $POUCHDB_DIR/node_modules/.bin/pouchdb-server && -f $POUCHDB_STAMP ]] || return 1
	[[ $(<"$POUCHDB_STAMP") == "$(sha256_of "$POUCHDB_DIR/package-lock.json")" ]]
}

# ensure_pouchdb_deps: npm ci in tools/pouchdb if node_modules is missing or stale.
# Install scripts are not run: leveldown loads the prebuilt binary shipped in its
# tarball, and sqlite3 (optional, unused) would try to download or compile one.
ensure_pouchdb_deps() {
	if [[ -n ${PTOP_POUCHDB_BIN:-} ]]; then
		[[ -x $PTOP_POUCHDB_BIN ]] || die "PTOP_POUCHDB_BIN=$PTOP_POUCHDB_BIN is not executable"
		return 0
	fi
	pouchdb_deps_fresh && return 0
	command -v node >/dev/null || die "node not found in PATH (needed for pouchdb-server)"
	command -v npm >/dev/null || die "npm not found in PATH (needed to install pouchdb-server)"
	mkdir -p "$PTOP_CACHE"
	(
		if command -v flock >/dev/null; then flock 9 || exit 1; fi
		pouchdb_deps_fresh && exit 0 # someone else installed it while we waited
		log "installing tools/pouchdb dependencies (npm ci, about a minute)"
		cd "$POUCHDB_DIR" || exit 1
		start=$SECONDS
		npm ci --ignore-scripts --no-audit --no-fund --prefer-offline >&2 || exit 1
		sha256_of package-lock.json >"$POUCHDB_STAMP" || exit 1
		log "npm ci done in $((SECONDS - start)) s"
	) 9>"$POUCHDB_NPM_LOCK" || die "npm ci in tools/pouchdb failed"
}

# free_port: print a free TCP port on 127.0.0.1.
free_port() {
	if command -v python3 >/dev/null; then
		python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
	else
		node -e 'const s=require("net").createServer(); s.listen(0,"127.0.0.1",()=>{console.log(s.address().port); s.close()})'
	fi
}

# http_ok URL: true if GET URL answers 2xx within 2 s.
http_ok() {
	if command -v curl >/dev/null; then
		curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
	else
		node -e 'fetch(process.argv[1], {signal: AbortSignal.timeout(2000)}).then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))' "$1"
	fi
}

# ensure_opensearch [NAME...]: fetch (mvn, from Maven Central) and unpack the pinned
# search servers of tools/opensearch/servers.txt if missing, under a lock shared
# with internal/testenv; default: all of them (the Elasticsearch sink's tests run
# against each). Sets OPENSEARCH_HOME to the OpenSearch install when it is among them.
# Needs java (17) and mvn; see tools/opensearch/install.sh.
ensure_opensearch() {
	local names=("$@") name home
	if ((${#names[@]} == 0)); then
		mapfile -t names < <(awk '!/^#/ && NF { print $1 }' "$PTOP_ROOT/tools/opensearch/servers.txt")
	fi
	for name in "${names[@]}"; do
		home=$(bash "$PTOP_ROOT/tools/opensearch/install.sh" "$name") || die "could not install the $name server (tools/opensearch/install.sh)"
		# shellcheck disable=SC2034 # used by the scripts that source this file
		if [[ $name == opensearch ]]; then OPENSEARCH_HOME=$home; fi
	done
}

# ensure_kafka: fetch (mvn, from Maven Central) the pinned Apache Kafka broker of
# tools/kafka/pom.xml if missing, under a lock shared with internal/testenv; sets
# KAFKA_HOME to the install (its jars in KAFKA_HOME/libs). Needs java (17) and
# mvn; see tools/kafka/install.sh.
ensure_kafka() {
	# shellcheck disable=SC2034 # used by the scripts that source this file
	KAFKA_HOME=$(bash "$PTOP_ROOT/tools/kafka/install.sh") || die "could not install Kafka (tools/kafka/install.sh)"
}

# pg_bindir: print the directory holding PostgreSQL's initdb and postgres:
# $PTOP_PG_BINDIR, else that of the initdb on PATH (symlinks resolved), else the
# newest /usr/lib/postgresql/*/bin (Debian keeps them off PATH). internal/testenv
# searches the same way.
pg_bindir() {
	local f d
	if [[ -n ${PTOP_PG_BINDIR:-} ]]; then
		[[ -x $PTOP_PG_BINDIR/initdb && -x $PTOP_PG_BINDIR/postgres ]] || return 1
		printf '%s\n' "$PTOP_PG_BINDIR"
		return 0
	fi
	if f=$(command -v initdb 2>/dev/null); then
		for d in "$(dirname "$(readlink -f "$f")")" "$(dirname "$f")"; do
			if [[ -x $d/postgres ]]; then printf '%s\n' "$d"; return 0; fi
		done
	fi
	while read -r d; do
		if [[ -x $d/initdb && -x $d/postgres ]]; then printf '%s\n' "$d"; return 0; fi
	done < <(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -t/ -k5,5nr)
	return 1
}

# ensure_golangci_lint: the pinned golangci-lint (see .golangci.yml), built with
# go install into .cache/bin when missing or of another version; sets GOLANGCI_LINT.
GOLANGCI_LINT_VERSION=v2.15.0
ensure_golangci_lint() {
	GOLANGCI_LINT=$PTOP_CACHE/bin/golangci-lint
	if [[ -x $GOLANGCI_LINT ]] && "$GOLANGCI_LINT" version 2>/dev/null | grep -q "version ${GOLANGCI_LINT_VERSION#v} "; then
		return 0
	fi
	log "installing golangci-lint $GOLANGCI_LINT_VERSION (go install)"
	mkdir -p "$PTOP_CACHE/bin"
	GOBIN=$PTOP_CACHE/bin go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION" ||
		die "could not install golangci-lint $GOLANGCI_LINT_VERSION"
}

# ensure_chromium: install Debian's chromium when /usr/bin/chromium is missing; the
# status page's test (cmd/ptop, through chromedp) drives it and fails with a hint
# without it.
ensure_chromium() {
	local sudo=()
	[[ -x /usr/bin/chromium ]] && return 0
	command -v apt-get >/dev/null || die "chromium not found and no apt-get to install it: install Debian's chromium (/usr/bin/chromium)"
	if [[ $EUID -ne 0 ]]; then sudo=(sudo); fi
	log "installing chromium: apt-get update && apt-get install -y chromium"
	"${sudo[@]}" apt-get update >&2 || die "apt-get update failed"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >&2 ||
		die "apt-get install chromium failed"
	[[ -x /usr/bin/chromium ]] || die "chromium was installed, but /usr/bin/chromium is missing"
}

# ensure_postgres: install PostgreSQL from Debian's packages (postgresql-15, else
# postgresql) when initdb cannot be found; sets PG_BINDIR. The tests (through
# internal/testenv) and services.sh make their own throwaway clusters with it.
# shellcheck disable=SC2034 # PG_BINDIR is used by the scripts that source this file
ensure_postgres() {
	local sudo=()
	if PG_BINDIR=$(pg_bindir); then return 0; fi
	[[ -z ${PTOP_PG_BINDIR:-} ]] || die "PTOP_PG_BINDIR=$PTOP_PG_BINDIR has no initdb and postgres"
	command -v apt-get >/dev/null || die "PostgreSQL (initdb) not found and no apt-get to install it: install PostgreSQL 15"
	if [[ $EUID -ne 0 ]]; then sudo=(sudo); fi
	log "installing PostgreSQL: apt-get update && apt-get install -y postgresql-15"
	"${sudo[@]}" apt-get update >&2 || die "apt-get update failed"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 >&2 ||
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2 ||
		die "apt-get install postgresql failed"
	PG_BINDIR=$(pg_bindir) || die "PostgreSQL was installed, but initdb is not in /usr/lib/postgresql/*/bin"
}
