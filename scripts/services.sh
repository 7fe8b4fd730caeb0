#!/usr/bin/env bash
# Start and stop the servers ptop talks to, on 127.0.0.1, for demos and manual tests.
#
#   eval "$(scripts/services.sh up)"   # start (idempotent); prints export lines
#   scripts/services.sh up --data-dir DIR   # same as COUCH_DATA_DIR=DIR
#   scripts/services.sh env            # re-print the exports of running services
#   scripts/services.sh status         # what is running (stderr)
#   scripts/services.sh down           # stop what `up` started (by PID file only)
#   scripts/services.sh up couch       # any command can name some services only
#   eval "$(scripts/services.sh up kafka)"   # Kafka is started only when named
#
# Services: couch (pouchdb-server; `up` also creates the database the shipped
# pillows read, $COUCH_DB or cases), opensearch, postgres, and lines (a TCP
# line listener standing in for logstash, for pillows/cases-tcp.yaml; it
# appends what it receives to $PTOP_OUT/cases-tcp.lines, default out/).
# kafka (Apache Kafka 4.1.1, one KRaft node, KAFKA_BROKERS) is started only by
# `up kafka`: no shipped pillow needs it, and it costs a JVM of ~300-400 MB;
# `down`, `env` and `status` without names include it when it runs.
# After `up`, `ptop run pipelines/` runs every shipped pillow; in a second
# shell, `eval "$(scripts/services.sh env)"` sets the same variables.
#
# Only `export NAME=value` lines go to stdout; everything else goes to stderr.
# State (PID files, logs, scratch dirs) lives in .cache/services/ (gitignored).
#
# Environment:
#   COUCH_PORT      port for pouchdb-server (default: a free port)
#   COUCH_DATA_DIR  keep databases in this directory (pouchdb-server --dir, LevelDB);
#                   default: --in-memory, so every `up` after a `down` starts empty
#   PTOP_POUCHDB_BIN  use this pouchdb-server binary instead of tools/pouchdb's
#   PG_PORT         port for PostgreSQL (default: a free port)
#   PG_DATA_DIR     keep the PostgreSQL cluster in this directory; default: a fresh
#                   throwaway cluster at every `up`
#   PTOP_PG_BINDIR  use the PostgreSQL binaries (initdb, postgres) of this directory
#   COUCH_DB        the database `up` creates for the shipped pillows (default cases)
#   TCP_PORT        port for the line listener (default: a free port)
#   PTOP_OUT        where the line listener writes (default out/)
#   KAFKA_PORT      port for Kafka's PLAINTEXT listener (default: a free port)
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
# `up` without names starts SERVICES; the other commands without names take
# ALL_SERVICES, which adds ON_DEMAND, the services started only when named.
SERVICES=(couch opensearch postgres lines)
ON_DEMAND=(kafka)
ALL_SERVICES=("${SERVICES[@]}" "${ON_DEMAND[@]}")

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
	couch_create_db
	couch_env
}

# couch_create_db: create the database the shipped pillows read, if missing.
couch_create_db() {
	local db=${COUCH_DB:-cases} code
	code=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT "$(couch_url)/$db") || die "could not create database $db"
	case $code in
	201 | 202) log "created database $db" ;;
	412) ;; # it exists
	*) die "could not create database $db (HTTP $code)" ;;
	esac
}

couch_down() {
	stop_pidfile pouchdb-server "$COUCH_PID" pouchdb-server
	rm -f "$COUCH_PORTFILE" "$COUCH_MODEFILE"
}

# ---------------------------------------------------------------------------
# Elasticsearch protocol: OpenSearch 2.19 integ-test-zip (ES_URL), pinned in
# tools/opensearch/servers.txt. Single node, 512 MB heap, no security plugin, a
# fresh data dir at every `up`. OPENSEARCH_PORT picks the HTTP port. OpenSearch
# refuses to run as root: as root it runs as PTOP_SEARCH_USER (default nobody).

OPENSEARCH_PID=$STATE/opensearch.pid
OPENSEARCH_PORTFILE=$STATE/opensearch.port
OPENSEARCH_DIRFILE=$STATE/opensearch.dir # holds the path of its config, data and logs
OPENSEARCH_LOG=$STATE/opensearch.log

opensearch_url() { printf 'http://127.0.0.1:%s' "$(<"$OPENSEARCH_PORTFILE")"; }

opensearch_running() {
	pidfile_pid "$OPENSEARCH_PID" >/dev/null && [[ -f $OPENSEARCH_PORTFILE ]] &&
		http_ok "$(opensearch_url)/_cluster/health"
}

opensearch_env() { printf 'export ES_URL=%s\n' "$(opensearch_url)"; }

opensearch_up() {
	local port tport dir java_home user runner=()
	if opensearch_running; then
		log "opensearch already running (pid $(<"$OPENSEARCH_PID"), $(opensearch_url))"
		opensearch_env
		return 0
	fi
	opensearch_down # a stale or unhealthy leftover

	ensure_opensearch opensearch
	command -v java >/dev/null || die "java not found in PATH (OpenSearch needs Java 17)"
	java_home=${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")}
	dir=$STATE/opensearch
	if [[ $EUID -eq 0 ]]; then
		user=${PTOP_SEARCH_USER:-nobody}
		id -u "$user" >/dev/null 2>&1 || die "user $user does not exist (set PTOP_SEARCH_USER to an unprivileged user)"
		command -v setpriv >/dev/null || die "setpriv not found (util-linux): needed to run OpenSearch as $user"
		runner=(setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --clear-groups)
		# Its directory must be within the user's reach.
		if ! "${runner[@]}" test -x "$STATE"; then dir=${TMPDIR:-/tmp}/ptop-services-opensearch; fi
	fi
	port=${OPENSEARCH_PORT:-$(free_port)}
	tport=$(free_port)
	if http_ok "http://127.0.0.1:$port/"; then
		die "port $port on 127.0.0.1 is already in use by another server"
	fi
	rm -rf "$dir"
	mkdir -p "$dir/data" "$dir/logs" "$dir/tmp"
	cp -R "$OPENSEARCH_HOME/config" "$dir/config"
	# Its launcher runs from the install directory: make the paths of jvm.options absolute.
	sed -i "s#logs/#$dir/logs/#g; s#HeapDumpPath=data#HeapDumpPath=$dir/data#" "$dir/config/jvm.options"
	if [[ -n ${user:-} ]]; then chown -R "$(id -u "$user"):$(id -g "$user")" "$dir"; fi
	printf '%s\n' "$dir" >"$OPENSEARCH_DIRFILE"
	: >"$OPENSEARCH_LOG"
	printf '%s\n' "$port" >"$OPENSEARCH_PORTFILE"
	log "starting opensearch on 127.0.0.1:$port (data in $dir), log $OPENSEARCH_LOG"
	spawn "$OPENSEARCH_PID" "$OPENSEARCH_LOG" "$dir" \
		env -u JAVA_TOOL_OPTIONS HOME="$dir" OPENSEARCH_JAVA_HOME="$java_home" \
		OPENSEARCH_PATH_CONF="$dir/config" OPENSEARCH_TMPDIR="$dir/tmp" \
		OPENSEARCH_JAVA_OPTS="-Xms512m -Xmx512m" \
		"${runner[@]}" "$OPENSEARCH_HOME/bin/opensearch" \
		-Ediscovery.type=single-node -Enetwork.host=127.0.0.1 \
		-Ehttp.port="$port" -Etransport.port="$tport" \
		-Epath.data="$dir/data" -Epath.logs="$dir/logs" \
		-Ecluster.routing.allocation.disk.threshold_enabled=false \
		-Ecluster.name=ptop -Enode.name=ptop
	START_TIMEOUT=120 wait_healthy opensearch "$OPENSEARCH_PID" "$OPENSEARCH_LOG" \
		"$(opensearch_url)/_cluster/health?wait_for_status=yellow&timeout=1s"
	log "opensearch ready (pid $(<"$OPENSEARCH_PID"))"
	opensearch_env
}

opensearch_down() {
	local dir
	stop_pidfile opensearch "$OPENSEARCH_PID" org.opensearch.bootstrap.OpenSearch
	if [[ -f $OPENSEARCH_DIRFILE ]]; then
		dir=$(<"$OPENSEARCH_DIRFILE")
		if [[ $dir == *opensearch ]]; then rm -rf "$dir"; fi
	fi
	rm -f "$OPENSEARCH_PORTFILE" "$OPENSEARCH_DIRFILE"
}

# ---------------------------------------------------------------------------
# PostgreSQL 15, a throwaway initdb cluster (PG_DSN): superuser postgres, trust
# authentication, database ptop, fsync off, its unix socket in its own directory.
# A fresh cluster at every `up`, unless PG_DATA_DIR names one to keep. PG_PORT
# picks the port. PostgreSQL refuses to run as root: as root it runs as
# PTOP_PG_USER (default: postgres if that user exists, else nobody).

PG_PID=$STATE/postgres.pid
PG_PORTFILE=$STATE/postgres.port
PG_DIRFILE=$STATE/postgres.dir # holds the path of the cluster's directory
PG_LOG=$STATE/postgres.log

postgres_dsn() { printf 'postgres://postgres@127.0.0.1:%s/ptop?sslmode=disable' "$(<"$PG_PORTFILE")"; }

# postgres_ready PORT: true if the server on PORT accepts connections.
postgres_ready() {
	local bindir
	bindir=$(pg_bindir) || return 1
	"$bindir/pg_isready" -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -t 2
}

postgres_running() {
	pidfile_pid "$PG_PID" >/dev/null && [[ -f $PG_PORTFILE ]] && postgres_ready "$(<"$PG_PORTFILE")"
}

postgres_env() { printf 'export PG_DSN=%s\n' "$(postgres_dsn)"; }

postgres_up() {
	local port dir keep=false user runner=() pid i
	if postgres_running; then
		log "postgres already running (pid $(<"$PG_PID"), $(postgres_dsn))"
		postgres_env
		return 0
	fi
	postgres_down # a stale or unhealthy leftover

	ensure_postgres
	dir=$STATE/postgres
	if [[ -n ${PG_DATA_DIR:-} ]]; then
		mkdir -p "$PG_DATA_DIR"
		dir=$(cd "$PG_DATA_DIR" && pwd)
		keep=true
	fi
	if [[ $EUID -eq 0 ]]; then
		user=${PTOP_PG_USER:-}
		if [[ -z $user ]]; then
			if id -u postgres >/dev/null 2>&1; then user=postgres; else user=nobody; fi
		fi
		id -u "$user" >/dev/null 2>&1 || die "user $user does not exist (set PTOP_PG_USER to an unprivileged user)"
		command -v setpriv >/dev/null || die "setpriv not found (util-linux): needed to run PostgreSQL as $user"
		runner=(setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --clear-groups)
		# Its directory must be within the user's reach.
		if ! $keep && ! "${runner[@]}" test -x "$STATE"; then dir=${TMPDIR:-/tmp}/ptop-services-postgres; fi
	fi
	if ! $keep; then rm -rf "$dir"; fi
	mkdir -p "$dir/data" "$dir/sock"
	chmod 700 "$dir/data"
	if [[ -n ${user:-} ]]; then chown -R "$(id -u "$user"):$(id -g "$user")" "$dir"; fi
	printf '%s\n' "$dir" >"$PG_DIRFILE"
	: >"$PG_LOG"
	if [[ ! -f $dir/data/PG_VERSION ]]; then
		log "initdb in $dir/data"
		(cd "$dir" && "${runner[@]}" env LC_ALL=C "$PG_BINDIR/initdb" -D "$dir/data" -U postgres \
			--auth=trust --no-sync --no-instructions --locale=C --encoding=UTF8 >>"$PG_LOG" 2>&1) ||
			{ cat "$PG_LOG" >&2; die "initdb failed"; }
	fi
	port=${PG_PORT:-$(free_port)}
	if postgres_ready "$port"; then
		die "port $port on 127.0.0.1 is already in use by another server"
	fi
	printf '%s\n' "$port" >"$PG_PORTFILE"
	log "starting postgres on 127.0.0.1:$port (cluster in $dir), log $PG_LOG"
	spawn "$PG_PID" "$PG_LOG" "$dir" env LC_ALL=C "${runner[@]}" "$PG_BINDIR/postgres" -D "$dir/data" \
		-p "$port" -k "$dir/sock" -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off
	for ((i = 0; ; i++)); do
		if ! pid=$(pidfile_pid "$PG_PID"); then
			log "postgres exited during startup; its log ($PG_LOG):"
			cat "$PG_LOG" >&2
			rm -f "$PG_PID"
			die "postgres did not start"
		fi
		postgres_ready "$port" && break
		if ((i >= START_TIMEOUT * 5)); then
			log "postgres did not accept connections within ${START_TIMEOUT} s; its log ($PG_LOG):"
			cat "$PG_LOG" >&2
			postgres_down
			die "postgres did not start"
		fi
		sleep 0.2
	done
	if [[ -z $("$PG_BINDIR/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'ptop'") ]]; then
		"$PG_BINDIR/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE ptop" >&2 ||
			die "could not create database ptop"
	fi
	log "postgres ready (pid $pid)"
	postgres_env
}

postgres_down() {
	local pid dir i
	# SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client
	# to leave); stop_pidfile then makes sure, with SIGTERM and SIGKILL.
	if pid=$(pidfile_pid "$PG_PID") && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "postgres -D"; then
		log "stopping postgres (pid $pid)"
		kill -INT "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	stop_pidfile postgres "$PG_PID" "postgres -D"
	if [[ -f $PG_DIRFILE ]]; then
		dir=$(<"$PG_DIRFILE")
		# Only the throwaway clusters are removed, never a PG_DATA_DIR.
		if [[ $dir == "$STATE/postgres" || $dir == */ptop-services-postgres ]]; then rm -rf "$dir"; fi
	fi
	rm -f "$PG_PORTFILE" "$PG_DIRFILE"
}

# ---------------------------------------------------------------------------
# TCP line listener (TCP_ADDRESS): internal/cmd/linesink, the demo's stand-in for
# logstash's tcp input with the json_lines codec. Appends every line to
# $PTOP_OUT/cases-tcp.lines.

LINES_PID=$STATE/lines.pid
LINES_PORTFILE=$STATE/lines.port
LINES_LOG=$STATE/lines.log
LINES_BIN=$STATE/linesink

lines_out() { printf '%s/cases-tcp.lines' "${PTOP_OUT:-$PTOP_ROOT/out}"; }

lines_running() {
	pidfile_pid "$LINES_PID" >/dev/null && [[ -f $LINES_PORTFILE ]] &&
		(exec 3<>"/dev/tcp/127.0.0.1/$(<"$LINES_PORTFILE")") 2>/dev/null
}

lines_env() { printf 'export TCP_ADDRESS=127.0.0.1:%s\n' "$(<"$LINES_PORTFILE")"; }

lines_up() {
	local port out i
	if lines_running; then
		log "line listener already running (pid $(<"$LINES_PID"), 127.0.0.1:$(<"$LINES_PORTFILE"))"
		lines_env
		return 0
	fi
	lines_down
	command -v go >/dev/null || die "go not found in PATH (the line listener is built from internal/cmd/linesink)"
	(cd "$PTOP_ROOT" && go build -o "$LINES_BIN" ./internal/cmd/linesink) || die "could not build internal/cmd/linesink"
	port=${TCP_PORT:-$(free_port)}
	out=$(lines_out)
	mkdir -p "$(dirname "$out")"
	printf '%s\n' "$port" >"$LINES_PORTFILE"
	: >"$LINES_LOG"
	log "starting the line listener on 127.0.0.1:$port, appending to $out"
	spawn "$LINES_PID" "$LINES_LOG" "$STATE" "$LINES_BIN" -listen "127.0.0.1:$port" -out "$out"
	for ((i = 0; i < START_TIMEOUT * 10; i++)); do
		lines_running && break
		if ! pidfile_pid "$LINES_PID" >/dev/null; then
			cat "$LINES_LOG" >&2
			die "the line listener did not start"
		fi
		sleep 0.1
	done
	lines_running || die "the line listener did not start"
	lines_env
}

lines_down() {
	stop_pidfile "line listener" "$LINES_PID" linesink
	rm -f "$LINES_PORTFILE"
}

# ---------------------------------------------------------------------------
# Apache Kafka 4.1.1 (KAFKA_BROKERS), pinned in tools/kafka/pom.xml: one node in
# KRaft combined mode (broker and controller), PLAINTEXT and CONTROLLER listeners
# on 127.0.0.1, replication factors 1, 256 MB heap, a fresh data dir at every
# `up`. KAFKA_PORT picks the PLAINTEXT port. The same server.properties as
# internal/testenv's kafka.go, without its SASL and SSL listeners.

KAFKA_PID=$STATE/kafka.pid
KAFKA_PORTFILE=$STATE/kafka.port
KAFKA_LOG=$STATE/kafka.log
KAFKA_DIR=$STATE/kafka

kafka_brokers() { printf '127.0.0.1:%s' "$(<"$KAFKA_PORTFILE")"; }

# tcp_open PORT: true if something accepts connections on 127.0.0.1:PORT.
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

kafka_running() {
	pidfile_pid "$KAFKA_PID" >/dev/null && [[ -f $KAFKA_PORTFILE ]] && tcp_open "$(<"$KAFKA_PORTFILE")"
}

kafka_env() { printf 'export KAFKA_BROKERS=%s\n' "$(kafka_brokers)"; }

kafka_up() {
	local port cport java cp i
	if kafka_running; then
		log "kafka already running (pid $(<"$KAFKA_PID"), $(kafka_brokers))"
		kafka_env
		return 0
	fi
	kafka_down # a stale or unhealthy leftover

	ensure_kafka
	java=java
	if [[ -n ${JAVA_HOME:-} ]]; then java=$JAVA_HOME/bin/java; fi
	command -v "$java" >/dev/null || die "java not found (Kafka needs Java 17)"
	port=${KAFKA_PORT:-$(free_port)}
	cport=$(free_port)
	if tcp_open "$port"; then
		die "port $port on 127.0.0.1 is already in use by another server"
	fi
	rm -rf "$KAFKA_DIR"
	mkdir -p "$KAFKA_DIR/data"
	cat >"$KAFKA_DIR/server.properties" <<-EOF
		process.roles=broker,controller
		node.id=1
		controller.quorum.bootstrap.servers=127.0.0.1:$cport
		listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
		advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
		controller.listener.names=CONTROLLER
		listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
		inter.broker.listener.name=PLAINTEXT
		log.dirs=$KAFKA_DIR/data
		num.partitions=1
		offsets.topic.replication.factor=1
		offsets.topic.num.partitions=4
		transaction.state.log.replication.factor=1
		transaction.state.log.min.isr=1
		share.coordinator.state.topic.replication.factor=1
		share.coordinator.state.topic.min.isr=1
		group.initial.rebalance.delay.ms=0
	EOF
	# Without a log4j2 config Kafka logs nothing: warnings, and its start.
	cat >"$KAFKA_DIR/log4j2.properties" <<-'EOF'
		status = warn
		appender.out.type = Console
		appender.out.name = out
		appender.out.layout.type = PatternLayout
		appender.out.layout.pattern = [%d] %p %m (%c)%n
		rootLogger.level = WARN
		rootLogger.appenderRef.out.ref = out
		logger.server.name = kafka.server.KafkaRaftServer
		logger.server.level = INFO
	EOF
	cp=(env -u JAVA_TOOL_OPTIONS -u CLASSPATH "$java" -Xms256m -Xmx256m -Djava.awt.headless=true
		"-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2.properties" -cp "$KAFKA_HOME/libs/*")
	: >"$KAFKA_LOG"
	"${cp[@]}" kafka.tools.StorageTool format --standalone -t "$(kafka_cluster_id)" \
		-c "$KAFKA_DIR/server.properties" >>"$KAFKA_LOG" 2>&1 ||
		{ cat "$KAFKA_LOG" >&2; die "formatting Kafka's storage failed"; }
	printf '%s\n' "$port" >"$KAFKA_PORTFILE"
	log "starting kafka on 127.0.0.1:$port (controller :$cport, data in $KAFKA_DIR), log $KAFKA_LOG"
	spawn "$KAFKA_PID" "$KAFKA_LOG" "$KAFKA_DIR" "${cp[@]}" kafka.Kafka "$KAFKA_DIR/server.properties"
	for ((i = 0; ; i++)); do
		if ! pidfile_pid "$KAFKA_PID" >/dev/null; then
			log "kafka exited during startup; its log ($KAFKA_LOG):"
			cat "$KAFKA_LOG" >&2
			rm -f "$KAFKA_PID"
			die "kafka did not start"
		fi
		# The broker logs this line once it serves clients.
		grep -q 'Kafka Server started' "$KAFKA_LOG" && tcp_open "$port" && break
		if ((i >= START_TIMEOUT * 5)); then
			log "kafka did not start within ${START_TIMEOUT} s; its log ($KAFKA_LOG):"
			cat "$KAFKA_LOG" >&2
			kafka_down
			die "kafka did not start"
		fi
		sleep 0.2
	done
	log "kafka ready (pid $(<"$KAFKA_PID"))"
	kafka_env
}

# kafka_cluster_id: a random cluster id as Kafka writes them (16 bytes, URL-safe
# base64 without padding), not starting with '-' (the storage tool would take it
# for an option).
kafka_cluster_id() {
	local id=-
	while [[ $id == -* ]]; do
		id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
	done
	printf '%s\n' "$id"
}

kafka_down() {
	stop_pidfile kafka "$KAFKA_PID" kafka.Kafka
	rm -rf "$KAFKA_DIR"
	rm -f "$KAFKA_PORTFILE"
}

# ---------------------------------------------------------------------------

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
	exit 2
}

main() {
	[[ $# -ge 1 ]] || usage
	local cmd=$1 s i any=false
	local only=()
	shift
	while [[ $# -gt 0 ]]; do
		case $cmd:$1 in
		up:--data-dir) [[ $# -ge 2 ]] || usage; export COUCH_DATA_DIR=$2; shift 2 ;;
		up:--data-dir=*) export COUCH_DATA_DIR=${1#*=}; shift ;;
		*:-*) usage ;;
		*)
			[[ " ${ALL_SERVICES[*]} " == *" $1 "* ]] || die "unknown service $1 (services: ${ALL_SERVICES[*]})"
			only+=("$1")
			shift
			;;
		esac
	done
	# Named services only (in the order given), else all of them (but `up`
	# starts those on demand only when named).
	local named=false
	if ((${#only[@]} > 0)); then
		SERVICES=("${only[@]}")
		named=true
	elif [[ $cmd != up ]]; then
		SERVICES=("${ALL_SERVICES[@]}")
	fi
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
			elif $named || [[ " ${ON_DEMAND[*]} " != *" $s "* ]]; then
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
