#!/usr/bin/env bash
# The demo: starts local servers — a CouchDB-compatible one (pouchdb-server),
# OpenSearch, PostgreSQL, and a TCP line listener standing in for logstash —
# loads sample case documents, and runs the pillows in pipelines/ until Ctrl-C
# (or for DEMO_SECONDS). File sinks write to out/ (PTOP_OUT), the TCP
# listener to out/cases-tcp.lines.
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
go build -o bin/linesink ./internal/cmd/linesink

ensure_postgres
ensure_opensearch opensearch
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
TCP_ADDRESS=127.0.0.1:$(free_port)
export TCP_ADDRESS
bin/linesink -listen "$TCP_ADDRESS" -out "$PTOP_OUT/cases-tcp.lines" &
linesink_pid=$!
if [[ ${DEMO_KEEP_SERVICES:-} != 1 ]]; then
	trap 'kill "$linesink_pid" 2>/dev/null; scripts/services.sh down' EXIT
else
	trap 'kill "$linesink_pid" 2>/dev/null' EXIT
fi
log "TCP listener (logstash stand-in) at $TCP_ADDRESS"
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
for f in "$PTOP_OUT"/*.jsonl "$PTOP_OUT"/*.lines; do
	[[ -e $f ]] && printf '  %-40s %s lines\n' "${f#"$PTOP_ROOT"/}" "$(wc -l <"$f")" >&2
done
curl -fsS -X POST "$ES_URL/case-search/_refresh" >/dev/null 2>&1 || true
printf '  %-40s %s documents\n' "OpenSearch index case-search" \
	"$(curl -fsS "$ES_URL/case-search/_count" 2>/dev/null | sed -n 's/.*"count":\([0-9]*\).*/\1/p')" >&2
printf '  %-40s %s rows\n' "PostgreSQL table cases" \
	"$("$PG_BINDIR/psql" -X -qtA "$PG_DSN" -c 'select count(*) from cases' 2>/dev/null || echo '?')" >&2
exit "$rc"
