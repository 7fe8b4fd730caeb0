#!/usr/bin/env bash
# Throughput benchmarks, printed as docs/s (see README, Performance):
#   1. ptop from the file source through filter + transform into the file sink,
#      and Benthos v4.60 (tools/benthos) doing the same work with a bloblang
#      mapping on the same file, in the same run
#   2. curl alone reading pouchdb-server's feed (normal and continuous)
#   3. ptop reading the same continuous feed into the file sink
#      (as is, and through filter + transform)
#   4. the feeder: ptop reading the same feed into the kafka sink (change
#      envelopes, no filter or transform) against the same pillow into the
#      file sink, alternately in the same run, on a broker of
#      `scripts/services.sh up kafka`
#
#   scripts/bench.sh                 # 100k documents
#   BENCH_DOCS=20000 scripts/bench.sh
#   BENCH_ONLY=engine scripts/bench.sh   # step 1 only: ptop against Benthos
#   BENCH_ONLY=feeder scripts/bench.sh   # step 4 only: the feeder
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PTOP_ROOT"

N=${BENCH_DOCS:-100000}
RUNS=${BENCH_RUNS:-3}
work=$(mktemp -d)
ONLY=${BENCH_ONLY:-}
started_services=
started_kafka=
cleanup() {
	[[ -n $started_services ]] && scripts/services.sh down couch
	[[ -n $started_kafka ]] && scripts/services.sh down kafka
	rm -rf "$work"
}
trap cleanup EXIT

mkdir -p bin
go build -o bin/ptop ./cmd/ptop
go build -o bin/gendocs ./internal/cmd/gendocs
(cd tools/benthos && go build -o ../../bin/benthos .)

now() { date +%s.%N; }
rate() { awk -v n="$1" -v s="$2" -v e="$3" 'BEGIN { printf "%d", n / (e - s) }'; }
best() { tr ' ' '\n' | sort -n | tail -1; }

FILTER='doc.doc_type == "CommCareCase" && doc.domain in ["demo", "prod"]'
TRANSFORM='  function transform(doc, change) {
    return {
      _id: doc._id, name: doc.name.toUpperCase(), domain: doc.domain,
      opened_on: doc.opened_on, closed: doc.closed, age: doc.properties.age,
      village: doc.properties.village,
    };
  }'

# pillow DIR NAME SOURCE-YAML WITH-TRANSFORM [SINK-YAML]
# (default sink: the file sink into DIR/out.jsonl)
pillow() {
	local sink=${5:-}
	[[ -n $sink ]] || sink="file: {path: $1/out.jsonl}"
	mkdir -p "$1"
	{
		echo "name: $2"
		echo "source:"
		echo "$3"
		if [[ $4 == yes ]]; then
			echo "filter: $FILTER"
			echo "transform: |"
			echo "$TRANSFORM"
		fi
		echo "batch: {size: 1000, wait: 500ms}"
		echo "sinks:"
		echo "  - $sink"
	} >"$1/$2.yaml"
}

log "generating $N documents"
bin/gendocs -n "$N" -changes "$work/changes.jsonl"

# 1. file source
if [[ $ONLY != feeder ]]; then
pillow "$work/file" bench-file "  file: {path: $work/changes.jsonl}" yes
rates=""
for ((i = 0; i < RUNS; i++)); do
	rm -f "$work/file/out.jsonl"
	s=$(now)
	bin/ptop run "$work/file" --log-level warn
	e=$(now)
	rates="$rates $(rate "$N" "$s" "$e")"
done
file_rate=$(best <<<"$rates")
echo "file source -> filter+transform -> file sink: $file_rate docs/s (best of $RUNS:$rates)"

# 1b. Benthos, the same filter and transform as a bloblang mapping, the
# same input, the same output shape; time to the end of its run.
cat >"$work/benthos.yaml" <<EOF
input:
  file:
    paths: [ "$work/changes.jsonl" ]
    scanner: { lines: { max_buffer_size: 16777216 } }
pipeline:
  threads: -1
  processors:
    - mapping: |
        let doc = this.doc
        root = if \$doc.doc_type == "CommCareCase" && ["demo", "prod"].contains(\$doc.domain) {
          {"action": "index", "id": \$doc._id, "doc": {"_id": \$doc._id, "name": \$doc.name.uppercase(), "domain": \$doc.domain,
            "opened_on": \$doc.opened_on, "closed": \$doc.closed, "age": \$doc.properties.age, "village": \$doc.properties.village}}
        } else { deleted() }
output:
  file: { path: "$work/benthos.out", codec: lines }
logger: { level: WARN }
EOF
rates=""
for ((i = 0; i < RUNS; i++)); do
	rm -f "$work/benthos.out"
	s=$(now)
	bin/benthos -c "$work/benthos.yaml"
	e=$(now)
	rates="$rates $(rate "$N" "$s" "$e")"
done
benthos_rate=$(best <<<"$rates")
[[ $(wc -l <"$work/benthos.out") == $(wc -l <"$work/file/out.jsonl") ]] ||
	die "benthos wrote $(wc -l <"$work/benthos.out") lines, ptop $(wc -l <"$work/file/out.jsonl"): not the same work"
echo "benthos v4.60, file -> bloblang -> file: $benthos_rate docs/s (best of $RUNS:$rates); ptop is $(awk -v a="$file_rate" -v b="$benthos_rate" 'BEGIN { printf "%.1f", a / b }')x (goal >= 3.5x)"

fi # step 1
[[ $ONLY == engine ]] && exit 0

# 2. the server and curl
if ! scripts/services.sh env couch >/dev/null 2>&1; then
	started_services=1
fi
eval "$(scripts/services.sh up couch)"
curl -fsS -X DELETE "$COUCH_URL/bench" >/dev/null 2>&1 || true
log "loading $N documents into $COUCH_URL/bench"
bin/gendocs -n "$N" -couch "$COUCH_URL" -db bench

if [[ $ONLY != feeder ]]; then
rates=""
for ((i = 0; i < RUNS; i++)); do
	s=$(now)
	curl -fsS "$COUCH_URL/bench/_changes?include_docs=true" >/dev/null
	e=$(now)
	rates="$rates $(rate "$N" "$s" "$e")"
done
curl_normal=$(best <<<"$rates")
echo "curl, normal feed:     $curl_normal docs/s (best of $RUNS:$rates)"

rates=""
for ((i = 0; i < RUNS; i++)); do
	# The continuous feed never ends: time the arrival of the Nth row.
	s=$(now)
	curl -fsSN "$COUCH_URL/bench/_changes?feed=continuous&include_docs=true&heartbeat=500" 2>/dev/null |
		{
			head -n "$N" >/dev/null
			now >"$work/curl-end"
		} || true
	e=$(<"$work/curl-end")
	rates="$rates $(rate "$N" "$s" "$e")"
done
curl_cont=$(best <<<"$rates")
echo "curl, continuous feed: $curl_cont docs/s (best of $RUNS:$rates)"

fi # step 2

# 3. ptop from the server: time until the sink holds every document, as
# ptop's /status says (cheaper to poll than counting the file's lines).
# run_couch DIR NAME WANT: prints docs/s
run_couch() {
	local dir=$1 name=$2 want=$3 s e pid n port
	rm -f "$dir/out.jsonl"
	curl -fsS -X DELETE "$COUCH_URL/bench/_local/ptop-$name" >/dev/null 2>&1 || true
	port=$(free_port)
	s=$(now)
	bin/ptop run "$dir" --log-level warn --http "127.0.0.1:$port" &
	pid=$!
	while :; do
		n=$(curl -fsS "http://127.0.0.1:$port/status" 2>/dev/null | sed -n 's/.*"written": \([0-9]*\).*/\1/p')
		((${n:-0} >= want)) && break
		kill -0 "$pid" 2>/dev/null || die "ptop exited early"
		sleep 0.1 # polling costs CPU the server needs; 0.1 s is ~3% of a run
	done
	e=$(now)
	kill -TERM "$pid"
	wait "$pid" || true
	rate "$N" "$s" "$e"
}

if [[ $ONLY != feeder ]]; then
for mode in plain transform; do
	with=no
	want=$N
	if [[ $mode == transform ]]; then
		with=yes
		want=$(grep -c '"doc_type":"CommCareCase","domain":"\(demo\|prod\)"' "$work/changes.jsonl")
	fi
	pillow "$work/couch-$mode" "bench-couch-$mode" "  couchdb: {url: \"$COUCH_URL\", db: bench}" "$with"
	rates=""
	for ((i = 0; i < RUNS; i++)); do
		rates="$rates $(run_couch "$work/couch-$mode" "bench-couch-$mode" "$want")"
	done
	r=$(best <<<"$rates")
	echo "ptop, couchdb source ($mode) -> file sink: $r docs/s (best of $RUNS:$rates); $(awk -v a="$r" -v b="$curl_cont" 'BEGIN { printf "%d%%", 100 * a / b }') of curl continuous, $(awk -v a="$r" -v b="$curl_normal" 'BEGIN { printf "%d%%", 100 * a / b }') of curl normal"
done
fi # step 3

# 4. the feeder: the couchdb source into the kafka sink, change envelopes
# (what a kafka source reads), against the same pillow into the file sink;
# the two alternate, so that both see the same machine. Each kafka run
# publishes into a new topic (12 partitions, created by the sink).
if ! scripts/services.sh env kafka >/dev/null 2>&1; then
	started_kafka=1
fi
eval "$(scripts/services.sh up kafka)"
pillow "$work/feed-file" bench-feed-file "  couchdb: {url: \"$COUCH_URL\", db: bench}" no
file_rates=""
kafka_rates=""
for ((i = 0; i < RUNS; i++)); do
	file_rates="$file_rates $(run_couch "$work/feed-file" bench-feed-file "$N")"
	rm -rf "$work/feed-kafka"
	pillow "$work/feed-kafka" bench-feed-kafka "  couchdb: {url: \"$COUCH_URL\", db: bench}" no \
		"kafka: {brokers: \"$KAFKA_BROKERS\", topic: bench-feed-$$-$i, format: change}"
	kafka_rates="$kafka_rates $(run_couch "$work/feed-kafka" bench-feed-kafka "$N")"
done
fr=$(best <<<"$file_rates")
kr=$(best <<<"$kafka_rates")
echo "ptop, couchdb source -> file sink:  $fr docs/s (best of $RUNS:$file_rates)"
echo "ptop, couchdb source -> kafka sink: $kr docs/s (best of $RUNS:$kafka_rates); $(awk -v a="$kr" -v b="$fr" 'BEGIN { printf "%.2f", a / b }') of the file sink (goal >= 0.9)"
curl -fsS -X DELETE "$COUCH_URL/bench" >/dev/null 2>&1 || true
