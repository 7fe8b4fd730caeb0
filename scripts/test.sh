#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run):
#
#   scripts/test.sh           prepare, then everything below
#   scripts/test.sh prepare   step 1 only: install the test servers, run nothing
#
# Tests never install anything themselves; `go test -short ./...` (the unit
# tier) needs none of it.
#
#   1. npm ci in tools/pouchdb if node_modules is missing or stale; PostgreSQL
#      (apt-get install postgresql-15) if initdb is missing; the search servers
#      and Apache Kafka from Maven Central (mvn) if missing; chromium (apt-get
#      install chromium, for the status page's browser test) if missing
#   2. go vet ./... and golangci-lint run ./... (.golangci.yml)
#   3. go test -count=1 ./...   (integration tests start their own servers
#                                through internal/testenv)
#   4. a short fuzz run of each target in scripts/fuzz-targets.txt
#
# Needs Go, Node.js and npm. Exits non-zero on the first failure.
#
# Environment:
#   FUZZTIME     fuzz time per target (default 15s)
#   GOTESTFLAGS  extra flags for step 3, e.g. "-race" or "-run TestX"
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PTOP_ROOT"

FUZZTIME=${FUZZTIME:-15s}
FUZZ_TARGETS=scripts/fuzz-targets.txt
step="setup"
started=$SECONDS

finish() {
	local rc=$?
	if ((rc == 0)); then
		printf 'test.sh: PASS (%d s)\n' "$((SECONDS - started))"
	else
		printf 'test.sh: FAIL in step "%s" (exit %d, %d s)\n' "$step" "$rc" "$((SECONDS - started))"
	fi
}
trap finish EXIT

section() {
	step=$1
	printf '\n=== %s\n' "$1"
}

command -v go >/dev/null || die "go not found in PATH"
section "tools: go $(go env GOVERSION), node $(node --version 2>/dev/null || echo missing), npm $(npm --version 2>/dev/null || echo missing)"
ensure_pouchdb_deps
ensure_postgres # PostgreSQL from Debian's packages if initdb is missing
ensure_chromium # Debian's chromium, for the status page's test, if missing
# shellcheck disable=SC2119 # no names: every pinned server
ensure_opensearch # OpenSearch and Elasticsearch integ-test-zips from Maven Central
ensure_kafka      # Apache Kafka's jars from Maven Central
ensure_golangci_lint # the pinned linter, with go install
log "postgres: $("$PG_BINDIR/postgres" --version)"
if [[ ${1:-} == prepare ]]; then
	step="done"
	exit 0
fi

section "go vet ./..."
go vet ./...

section "golangci-lint run ./... (.golangci.yml)"
"$GOLANGCI_LINT" run ./...

section "go test -count=1 ./..."
# shellcheck disable=SC2086 # GOTESTFLAGS is a list of flags
go test -count=1 ${GOTESTFLAGS:-} ./...

section "fuzz ($FUZZTIME per target, $FUZZ_TARGETS)"
n=0
if [[ -f $FUZZ_TARGETS ]]; then
	# Lines: "PKG FUZZNAME"; blank lines and #comments are skipped.
	while read -r pkg name extra || [[ -n ${pkg:-} ]]; do
		[[ -z ${pkg:-} || $pkg == \#* ]] && continue
		[[ -n ${name:-} && -z ${extra:-} ]] || die "$FUZZ_TARGETS: bad line: $pkg ${name:-} ${extra:-} (want: PKG FUZZNAME)"
		step="fuzz $pkg $name"
		printf -- '--- %s %s\n' "$pkg" "$name"
		# go test -fuzz passes when nothing matches: check the target exists.
		listed=$(go test -list "^${name}\$" "$pkg" </dev/null) || die "go test -list $pkg failed"
		grep -qx -- "$name" <<<"$listed" || die "$FUZZ_TARGETS: no fuzz test $name in $pkg"
		go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg" </dev/null
		n=$((n + 1))
	done <"$FUZZ_TARGETS"
fi
echo "fuzzed $n target(s)"
step="done"
