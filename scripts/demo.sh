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
#   DEMO_KEEP_SERVICES=1  leave the servers running afterwards, to look at what
#                 landed (the demo prints how); stop them with scripts/services.sh down
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

ensure_postgres
ensure_opensearch opensearch
mkdir -p "$PTOP_OUT"
# Empty the outputs in place: a line listener kept from an earlier demo
# holds its file open.
find "$PTOP_OUT" -maxdepth 1 -type f \( -name '*.jsonl' -o -name '*.lines' \) -exec truncate -s 0 {} +
eval "$(scripts/services.sh up)"
if [[ ${DEMO_KEEP_SERVICES:-} != 1 ]]; then
	trap 'scripts/services.sh down' EXIT
fi
log "CouchDB-compatible server at $COUCH_URL"
log "TCP line listener (logstash stand-in) at $TCP_ADDRESS"

log "loading $DEMO_DOCS sample documents into $COUCH_DB"
curl -fsS -X DELETE "$COUCH_URL/$COUCH_DB" >/dev/null 2>&1 || true
bin/gendocs -n "$DEMO_DOCS" -couch "$COUCH_URL" -db "$COUCH_DB"

log "checking the pillows"
bin/ptop validate pipelines/ >&2

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

if [[ ${DEMO_KEEP_SERVICES:-} == 1 ]]; then
	log "the servers keep running; to look at what landed:"
	cat >&2 <<-EOF
		  eval "\$(scripts/services.sh env)"    # COUCH_URL, ES_URL, PG_DSN, TCP_ADDRESS
		  head -3 ${PTOP_OUT#"$PTOP_ROOT"/}/case-search.jsonl
		  curl -s '$ES_URL/case-search/_search?size=3&pretty'
		  $PG_BINDIR/psql '$PG_DSN' -c 'select * from cases limit 5'
		  bin/ptop status pipelines/; bin/ptop errors --dir pipelines/
		  scripts/services.sh down              # when done
	EOF
else
	log "the servers are stopped, and the index and table with them; the files stay in ${PTOP_OUT#"$PTOP_ROOT"/}/"
	log "to keep the servers and look at the index and table: DEMO_KEEP_SERVICES=1 $0"
fi
exit "$rc"
