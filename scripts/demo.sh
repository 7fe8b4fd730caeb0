#!/usr/bin/env bash
# The demo: starts a local CouchDB-compatible server (pouchdb-server), loads
# sample case documents into it, and runs the pillows in pipelines/ until
# Ctrl-C (or for DEMO_SECONDS). Output records go to out/ (PTOP_OUT).
#
#   scripts/demo.sh                  # run until Ctrl-C
#   DEMO_SECONDS=10 scripts/demo.sh  # run 10 s, then stop (SIGTERM) and summarise
#
# Environment:
#   DEMO_DOCS     number of sample documents to load (default 5000)
#   DEMO_SECONDS  stop ptop after this many seconds (default: run until Ctrl-C)
#   PTOP_OUT      where the file sinks write (default out/)
#   DEMO_KEEP_SERVICES=1  leave the servers running afterwards
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PTOP_ROOT"

DEMO_DOCS=${DEMO_DOCS:-5000}
export PTOP_OUT=${PTOP_OUT:-$PTOP_ROOT/out}
export COUCH_DB=${COUCH_DB:-cases}

command -v go >/dev/null || die "go not found in PATH"
log "building ptop"
mkdir -p bin
go build -o bin/ptop ./cmd/ptop
go build -o bin/gendocs ./internal/cmd/gendocs

eval "$(scripts/services.sh up)"
if [[ ${DEMO_KEEP_SERVICES:-} != 1 ]]; then
	trap 'scripts/services.sh down' EXIT
fi
log "CouchDB-compatible server at $COUCH_URL"

log "loading $DEMO_DOCS sample documents into $COUCH_DB"
curl -fsS -X DELETE "$COUCH_URL/$COUCH_DB" >/dev/null 2>&1 || true
bin/gendocs -n "$DEMO_DOCS" -couch "$COUCH_URL" -db "$COUCH_DB"

log "checking the pillows"
bin/ptop validate pipelines/ >&2

rm -rf "$PTOP_OUT"
mkdir -p "$PTOP_OUT"
log "running the pillows in pipelines/; records go to $PTOP_OUT/ (Ctrl-C stops)"
rc=0
if [[ -n ${DEMO_SECONDS:-} ]]; then
	bin/ptop run pipelines/ &
	pid=$!
	sleep "$DEMO_SECONDS"
	kill -TERM "$pid"
	wait "$pid" || rc=$?
else
	bin/ptop run pipelines/ || rc=$?
fi

log "records written:"
for f in "$PTOP_OUT"/*.jsonl; do
	[[ -e $f ]] && printf '  %-40s %s\n' "${f#"$PTOP_ROOT"/}" "$(wc -l <"$f")" >&2
done
exit "$rc"
