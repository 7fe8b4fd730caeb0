#!/usr/bin/env bash
# Start and stop the servers ptop talks to, on 127.0.0.1, for demos and manual tests.
#
#   eval "$(scripts/services.sh up)"   # start (idempotent); prints export lines
#   scripts/services.sh up --data-dir DIR   # same as COUCH_DATA_DIR=DIR
#   scripts/services.sh env            # re-print the exports of running services
#   scripts/services.sh status         # what is running (stderr)
#   scripts/services.sh down           # stop what `up` started (by PID file only)
#
# Only `export NAME=value` lines go to stdout; everything else goes to stderr.
# State (PID files, logs, scratch dirs) lives in .cache/services/ (gitignored).
#
# Environment:
#   COUCH_PORT      port for pouchdb-server (default: a free port)
#   COUCH_DATA_DIR  keep databases in this directory (pouchdb-server --dir, LevelDB);
#                   default: --in-memory, so every `up` after a `down` starts empty
#   PTOP_POUCHDB_BIN  use this pouchdb-server binary instead of tools/pouchdb's
#
# Go integration tests do not use this script: they start their own servers
# through internal/testenv.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=$PTOP_CACHE/services
START_TIMEOUT=30 # seconds until a server must answer

# Services in start order; `down` goes in reverse. Each NAME has the functions
# NAME_up (start if needed, then print its exports), NAME_down, NAME_running and NAME_env.
SERVICES=(couch)
# Later: SERVICES=(couch opensearch postgres), see the placeholders at the end.

# ---------------------------------------------------------------------------
# process helpers (PID files)

# pidfile_pid FILE: print the PID recorded in FILE if that process is alive.
pidfile_pid() {
	local pid
	[[ -f $1 ]] || return 1
	pid=$(<"$1")
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
	printf '%s\n' "$pid"
}

# stop_pidfile NAME FILE PATTERN: SIGTERM the process in FILE (SIGKILL after 10 s),
# but only if its command line still contains PATTERN (guards against PID reuse).
stop_pidfile() {
	local name=$1 file=$2 pattern=$3 pid i
	if pid=$(pidfile_pid "$file"); then
		if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern" ||
			ps -o args= -p "$pid" 2>/dev/null | grep -qF -- "$pattern"; then
			log "stopping $name (pid $pid)"
			kill -TERM "$pid" 2>/dev/null || true
			for ((i = 0; i < 100; i++)); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
			if kill -0 "$pid" 2>/dev/null; then
				log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
				kill -KILL "$pid" 2>/dev/null || true
			fi
		else
			log "pid $pid in $file is not $name any more; not touching it"
		fi
	fi
	rm -f "$file"
}

# spawn PIDFILE LOGFILE DIR CMD...: run CMD in DIR, detached from this shell
# (own session, stdin from /dev/null, output appended to LOGFILE), and wait
# until it has written its PID to PIDFILE. The PID is that of CMD itself.
spawn() {
	local pidfile=$1 logfile=$2 dir=$3 i
	shift 3
	rm -f "$pidfile"
	local runner=()
	if command -v setsid >/dev/null; then runner=(setsid); else runner=(nohup); fi
	# shellcheck disable=SC2016 # $$ and $@ expand in the inner bash
	(cd "$dir" && exec "${runner[@]}" bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' \
		"$pidfile" "$@" </dev/null >>"$logfile" 2>&1) &
	for ((i = 0; i < 100; i++)); do
		[[ -s $pidfile ]] && return 0
		sleep 0.05
	done
	die "could not start $1 (no PID file $pidfile)"
}

# wait_healthy NAME PIDFILE LOGFILE URL: wait until URL answers while the process
# lives; on failure print the log, stop the process and fail.
wait_healthy() {
	local name=$1 pidfile=$2 logfile=$3 url=$4 deadline=$((SECONDS + START_TIMEOUT))
	while ((SECONDS < deadline)); do
		if ! pidfile_pid "$pidfile" >/dev/null; then
			log "$name exited during startup; its log ($logfile):"
			cat "$logfile" >&2
			rm -f "$pidfile"
			die "$name did not start"
		fi
		http_ok "$url" && return 0
		sleep 0.2
	done
	log "$name did not answer $url within ${START_TIMEOUT} s; its log ($logfile):"
	cat "$logfile" >&2
	stop_pidfile "$name" "$pidfile" "" # pattern "" matches any command line
	die "$name did not start"
}

# ---------------------------------------------------------------------------
# CouchDB protocol: pouchdb-server 4.2.0 (COUCH_URL)

COUCH_PID=$STATE/couch.pid
COUCH_PORTFILE=$STATE/couch.port
COUCH_MODEFILE=$STATE/couch.mode
COUCH_LOG=$STATE/couch.log
# pouchdb-server writes log.txt and config.json (holding the server uuid) into
# its working directory: run it in this scratch dir so the repo stays clean.
COUCH_WORKDIR=$STATE/couch

couch_url() { printf 'http://127.0.0.1:%s' "$(<"$COUCH_PORTFILE")"; }

couch_running() {
	pidfile_pid "$COUCH_PID" >/dev/null && [[ -f $COUCH_PORTFILE ]] && http_ok "$(couch_url)/"
}

couch_env() { printf 'export COUCH_URL=%s\n' "$(couch_url)"; }

couch_up() {
	local mode port args
	if [[ -n ${COUCH_DATA_DIR:-} ]]; then
		mkdir -p "$COUCH_DATA_DIR"
		mode="dir $(cd "$COUCH_DATA_DIR" && pwd)"
		args=(--dir "${mode#dir }")
	else
		mode=in-memory
		args=(--in-memory)
	fi

	if couch_running; then
		log "pouchdb-server already running (pid $(<"$COUCH_PID"), $(couch_url), $(<"$COUCH_MODEFILE"))"
		if [[ -n ${COUCH_PORT:-} && $COUCH_PORT != "$(<"$COUCH_PORTFILE")" ]] ||
			[[ $mode != "$(<"$COUCH_MODEFILE")" ]]; then
			log "warning: it was started with other settings; run '$0 down' first to apply COUCH_PORT/COUCH_DATA_DIR"
		fi
		couch_env
		return 0
	fi
	couch_down # a stale or unhealthy leftover

	ensure_pouchdb_deps
	port=${COUCH_PORT:-$(free_port)}
	if http_ok "http://127.0.0.1:$port/"; then
		die "port $port on 127.0.0.1 is already in use by another server"
	fi
	mkdir -p "$COUCH_WORKDIR"
	: >"$COUCH_LOG"
	printf '%s\n' "$port" >"$COUCH_PORTFILE"
	printf '%s\n' "$mode" >"$COUCH_MODEFILE"
	log "starting pouchdb-server on 127.0.0.1:$port ($mode), log $COUCH_LOG"
	spawn "$COUCH_PID" "$COUCH_LOG" "$COUCH_WORKDIR" \
		"$POUCHDB_BIN" --host 127.0.0.1 --port "$port" --no-color "${args[@]}"
	wait_healthy pouchdb-server "$COUCH_PID" "$COUCH_LOG" "$(couch_url)/"
	log "pouchdb-server ready (pid $(<"$COUCH_PID"))"
	couch_env
}

couch_down() {
	stop_pidfile pouchdb-server "$COUCH_PID" pouchdb-server
	rm -f "$COUCH_PORTFILE" "$COUCH_MODEFILE"
}

# ---------------------------------------------------------------------------
# Elasticsearch protocol: OpenSearch integ-test-zip (ES_URL) -- not implemented yet.
# Add opensearch_up / opensearch_down / opensearch_running / opensearch_env here,
# modelled on the couch_* functions (state in $STATE/opensearch.*), and append
# "opensearch" to SERVICES.

# ---------------------------------------------------------------------------
# PostgreSQL 15, throwaway initdb cluster (PG_DSN) -- not implemented yet.
# Add postgres_up / postgres_down / postgres_running / postgres_env here and
# append "postgres" to SERVICES.

# ---------------------------------------------------------------------------

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
	exit 2
}

main() {
	[[ $# -ge 1 ]] || usage
	local cmd=$1 s i any=false
	shift
	while [[ $# -gt 0 ]]; do
		case $cmd:$1 in
		up:--data-dir) [[ $# -ge 2 ]] || usage; export COUCH_DATA_DIR=$2; shift 2 ;;
		up:--data-dir=*) export COUCH_DATA_DIR=${1#*=}; shift ;;
		*) usage ;;
		esac
	done
	mkdir -p "$STATE"
	case $cmd in
	up)
		for s in "${SERVICES[@]}"; do "${s}_up"; done
		;;
	down)
		for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do "${SERVICES[i]}_down"; done
		;;
	env)
		for s in "${SERVICES[@]}"; do
			if "${s}_running"; then
				"${s}_env"
				any=true
			else
				log "$s is not running"
			fi
		done
		$any || die "no service is running; start them with: eval \"\$($0 up)\""
		;;
	status)
		for s in "${SERVICES[@]}"; do
			if "${s}_running"; then log "$s: running; $("${s}_env")"; else log "$s: not running"; fi
		done
		;;
	-h | --help | help) usage ;;
	*) usage ;;
	esac
}

main "$@"
