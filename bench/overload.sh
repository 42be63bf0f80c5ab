#!/usr/bin/env bash
# bench/overload.sh: tapproxy at twice its measured capacity, on loopback.
#
#   OVERLOAD_TIME=3m bash bench/overload.sh [--out FILE] [--time 3m] [--keep]    (make overload)
#
# 1. Capacity: one tapproxy (--workers 1, alone on PROXY_CPU) in front of the
#    benchmark responder (bench/cmd/responder); dnsperf without a rate limit
#    for CAPACITY_TIME seconds (dnsperf and the responder share LOAD_CPU, as
#    in bench/run.sh). Capacity = dnsperf's queries per second.
# 2. Overload: 2×capacity for OVERLOAD_TIME (default 3m), offered by a paced
#    sender (a small Go program this script writes and builds: dnsperf cannot
#    hold a rate once queries are lost, it waits for each lost query's -t
#    timeout with a bounded window: measured here, -q 2000 -t 1 against a
#    server that never answers sends about 1100 qps, and a window large
#    enough for 2× capacity, -q 20000, slows dnsperf itself to under
#    20 000 qps). Alongside it, dnsperf -Q PROBE_QPS measures what a
#    well-behaved client gets during the overload. Every SAMPLE_EVERY
#    seconds: tapproxy's RSS (VmRSS) and, from --metrics, goroutines,
#    in_flight, kernel drops (SO_RXQ_OVFL, client sockets and all),
#    dropped_inflight_full.
# 3. Recovery: once the load has stopped, a low-rate dnsperf run (RECOVERY_QPS
#    for 1 s, -t 1) is repeated until one loses nothing; recovery = seconds
#    from the end of the load to the end of that run (an upper bound, within
#    RECOVERY_MAX).
# Checks: RSS of the last third of the samples within 20 % + 8 MiB of the
# first third (no growth without bound), goroutines flat, in_flight never
# above the cap, drops visible (kernel or full-table) when the offered load
# really exceeded capacity, recovery within RECOVERY_MAX, and the final
# counters' accounting invariants. The markdown section is printed and, with
# --out FILE, appended to FILE. Exit status 0 when every check holds.
# Traffic stays on 127.0.0.1; every load is bounded (dnsperf -l); only the
# processes started here are stopped, by PID.
set -euo pipefail

OVERLOAD_TIME=${OVERLOAD_TIME:-3m}
CAPACITY_TIME=${CAPACITY_TIME:-10}
SAMPLE_EVERY=${SAMPLE_EVERY:-5}
RECOVERY_QPS=${RECOVERY_QPS:-1000}
PROBE_QPS=${PROBE_QPS:-1000}       # dnsperf's rate during the overload
RECOVERY_MAX=${RECOVERY_MAX:-60}
MAX_INFLIGHT=${MAX_INFLIGHT:-4096} # tapproxy --max-inflight (one worker)
TIMEOUT=${TIMEOUT:-2s}             # tapproxy --timeout
# tapproxy runs with GOGC=OVERLOAD_GOGC: see bench/soak.sh (the preallocated
# heap makes the default first GC target large, so garbage would look like
# growth for minutes).
OVERLOAD_GOGC=${OVERLOAD_GOGC:-25}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
DNSPERF_CLIENTS=${DNSPERF_CLIENTS:-8}
OUT=${OUT:-}
KEEP=${KEEP:-0}
TAPPROXY=${TAPPROXY:-}
RESPONDER=${RESPONDER:-}

COMMAND_LINE="$0 $*"
usage() { sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
	case "$1" in
	--out) OUT=$2; shift ;;
	--time) OVERLOAD_TIME=$2; shift ;;
	--keep) KEEP=1 ;;
	-h | --help) usage 0 ;;
	*) echo "overload.sh: unknown argument $1" >&2; usage 2 ;;
	esac
	shift
done

log() { printf '%s overload: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
secs() { # 3m, 90s, 1h or plain seconds
	case $1 in
	*h) echo $((${1%h} * 3600)) ;; *m) echo $((${1%m} * 60)) ;; *s) echo "${1%s}" ;; *) echo "$1" ;;
	esac
}
DURATION=$(secs "$OVERLOAD_TIME")
[ "$DURATION" -ge 10 ] || die "OVERLOAD_TIME must be at least 10s"

for t in dnsperf curl python3 go awk; do
	command -v "$t" >/dev/null || die "$t is required (make deps)"
done
PIN_PROXY=() PIN_LOAD=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
	PIN_PROXY=(taskset -c "$PROXY_CPU")
	PIN_LOAD=(taskset -c "$LOAD_CPU")
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tapproxy-overload.XXXXXX")
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

alive() { kill -0 "$1" 2>/dev/null; }
freeport() { python3 -c 'import socket
s=socket.socket(); s.bind(("127.0.0.1",0)); u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
p=s.getsockname()[1]; u.bind(("127.0.0.1",p)); print(p)'; }

# --- binaries --------------------------------------------------------------
if [ -z "$RESPONDER" ]; then
	RESPONDER=$WORK/responder
	(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$RESPONDER" ./bench/cmd/responder) || die "building the responder failed"
fi
if [ -z "$TAPPROXY" ]; then
	TAPPROXY=$WORK/tapproxy
	(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$TAPPROXY" ./cmd/tapproxy) || die "building tapproxy failed"
fi

# The paced sender (bench/cmd/flood).
mkdir -p "$WORK/flood"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$WORK/flood/flood" ./bench/cmd/flood) || die "building the paced sender failed"

# --- queries: the bench/run.sh mix (40 % A, 30 % AAAA, 10 % TXT, 20 % NXDOMAIN)
QF=$WORK/queries.txt
awk -v n=10000 'BEGIN {
	for (i = 0; i < n; i++) {
		k = i % 10
		if (k < 4) print "host" i ".bench.test A"
		else if (k < 7) print "host" i ".bench.test AAAA"
		else if (k < 8) print "txt" i ".bench.test TXT"
		else print "miss" i ".nx.bench.test A"
	}
}' >"$QF"

# --- responder and tapproxy -----------------------------------------------
RESP_PORT=$(freeport)
"${PIN_LOAD[@]}" "$RESPONDER" --listen "127.0.0.1:$RESP_PORT" --ready-file "$WORK/responder.ready" \
	>"$WORK/responder.log" 2>&1 &
RESP_PID=$!
PIDS+=("$RESP_PID")
for _ in $(seq 100); do
	[ -s "$WORK/responder.ready" ] && break
	alive "$RESP_PID" || die "responder exited: $(cat "$WORK/responder.log")"
	sleep 0.1
done
[ -s "$WORK/responder.ready" ] || die "responder not ready: $(cat "$WORK/responder.log")"

PORT=$(freeport)
METRICS=127.0.0.1:$(freeport)
PROXY_ARGS=(--listen "127.0.0.1:$PORT" --upstream "127.0.0.1:$RESP_PORT" --workers 1
	--max-inflight "$MAX_INFLIGHT" --timeout "$TIMEOUT" --metrics "$METRICS")
GOGC=$OVERLOAD_GOGC "${PIN_PROXY[@]}" "$TAPPROXY" "${PROXY_ARGS[@]}" >"$WORK/tapproxy.log" 2>&1 &
TP=$!
PIDS+=("$TP")
for _ in $(seq 100); do
	grep -q 'msg=ready' "$WORK/tapproxy.log" && break
	alive "$TP" || die "tapproxy exited: $(cat "$WORK/tapproxy.log")"
	sleep 0.1
done
grep -q 'msg=ready' "$WORK/tapproxy.log" || die "tapproxy not ready: $(cat "$WORK/tapproxy.log")"

# dnsperf_run TAG ARGS...: one bounded dnsperf run (its -l is in ARGS).
dnsperf_run() {
	local tag=$1
	shift
	"${PIN_LOAD[@]}" dnsperf -s 127.0.0.1 -p "$PORT" -d "$QF" -c "$DNSPERF_CLIENTS" "$@" >"$WORK/$tag.dnsperf" 2>&1
}
dp() { # dp FILE KEY
	case "$2" in
	sent) awk '/Queries sent:/ {print $3}' "$1" ;;
	completed) awk '/Queries completed:/ {print $3}' "$1" ;;
	lost) awk '/Queries lost:/ {print $3}' "$1" ;;
	qps) awk '/Queries per second:/ {printf "%.0f\n", $4}' "$1" ;;
	runtime) awk '/Run time \(s\):/ {print $4}' "$1" ;;
	esac
}

# --- 1. capacity -------------------------------------------------------------
log "tapproxy pid $TP on 127.0.0.1:$PORT (metrics $METRICS), responder on $RESP_PORT; measuring capacity for ${CAPACITY_TIME}s"
dnsperf_run capacity -l "$CAPACITY_TIME" -q 200 -t 2 || die "dnsperf (capacity) failed: $(tail -5 "$WORK/capacity.dnsperf")"
CAPACITY=$(dp "$WORK/capacity.dnsperf" qps)
if [ -z "$CAPACITY" ] || [ "$CAPACITY" -le 0 ]; then
	die "no capacity figure: $(tail -5 "$WORK/capacity.dnsperf")"
fi
TARGET=$((2 * CAPACITY))
log "capacity $CAPACITY qps (lost $(dp "$WORK/capacity.dnsperf" lost)); overload at $TARGET qps for ${DURATION}s"

# --- 2. overload, sampled --------------------------------------------------------
metric() { # metric SCRAPE NAME: sum of every series of NAME
	awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $NF} END {printf "%d\n", s}' <<<"$1"
}
client_drops() {
	awk '/^tapproxy_socket_kernel_drops_total\{/ && /kind="client"/ {s += $NF} END {printf "%d\n", s}' <<<"$1"
}
printf 't\trss_kib\tgoroutines\tin_flight\tkernel_drops\tclient_kernel_drops\tdropped_inflight_full\treceived\ttimed_out\n' >"$WORK/samples.tsv"
sample() {
	local m rss
	rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$TP/status")
	m=$(curl -fsS "http://$METRICS/metrics") || die "scraping $METRICS failed"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$rss" "$(metric "$m" go_goroutines)" "$(metric "$m" tapproxy_in_flight)" \
		"$(metric "$m" tapproxy_kernel_drops_total)" "$(client_drops "$m")" "$(metric "$m" tapproxy_dropped_inflight_full_total)" \
		"$(metric "$m" tapproxy_received_total)" "$(metric "$m" tapproxy_timed_out_total)" >>"$WORK/samples.tsv"
}
sample 0
BEFORE=$(tail -n 1 "$WORK/samples.tsv")
"${PIN_LOAD[@]}" "$WORK/flood/flood" -addr "127.0.0.1:$PORT" -rate "$TARGET" -duration "${DURATION}s" \
	>"$WORK/flood.log" 2>&1 &
LOAD=$!
PIDS+=("$LOAD")
dnsperf_run probe -l "$DURATION" -Q "$PROBE_QPS" -q 2000 -t 1 &
PROBE=$!
PIDS+=("$PROBE")
start=$(date +%s)
next=$SAMPLE_EVERY
while alive "$LOAD"; do
	el=$(($(date +%s) - start))
	[ "$el" -gt $((DURATION + 30)) ] && die "the paced sender ran 30 s past its $DURATION s"
	alive "$TP" || die "tapproxy died under load: $(tail -20 "$WORK/tapproxy.log")"
	if [ "$el" -ge "$next" ]; then
		sample "$el"
		next=$((next + SAMPLE_EVERY))
	fi
	sleep 0.5
done
wait "$LOAD" || die "the paced sender failed: $(cat "$WORK/flood.log")"
wait "$PROBE" || die "dnsperf (probe) failed: $(tail -5 "$WORK/probe.dnsperf")"
load_end=$(date +%s.%N)
sample "$(($(date +%s) - start))"
read -r _ fsent _ freplies _ ferrs _ fskipped _ fsecs <"$WORK/flood.log" || die "the paced sender printed no figures: $(cat "$WORK/flood.log")"
log "load over: paced sender sent $fsent in ${fsecs}s ($fskipped skipped, $ferrs send errors, $freplies replies); dnsperf probe sent $(dp "$WORK/probe.dnsperf" sent), lost $(dp "$WORK/probe.dnsperf" lost)"

# --- 3. recovery -----------------------------------------------------------------
RECOVERY=""
for i in $(seq 1 "$RECOVERY_MAX"); do
	dnsperf_run "recovery$i" -l 1 -Q "$RECOVERY_QPS" -q 100 -t 1 || die "dnsperf (recovery) failed: $(tail -5 "$WORK/recovery$i.dnsperf")"
	lost=$(dp "$WORK/recovery$i.dnsperf" lost) done_=$(dp "$WORK/recovery$i.dnsperf" completed)
	if [ "$lost" = 0 ] && [ "${done_:-0}" -gt 0 ]; then
		RECOVERY=$(awk -v a="$load_end" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
		RECOVERY_RUNS=$i
		break
	fi
	awk -v a="$load_end" -v b="$(date +%s.%N)" 'BEGIN {exit !(b - a > '"$RECOVERY_MAX"')}' && break
done
sample "$(($(date +%s) - start))"

# --- stop, final counters ------------------------------------------------------------
kill -TERM "$TP"
tp_status=0
wait "$TP" || tp_status=$?
line=$(grep 'msg="final counters"' "$WORK/tapproxy.log" | tail -n 1 || true)

# --- checks -----------------------------------------------------------------------
fail=0
CHECKS=()
check() { # check OK|FAIL TEXT
	CHECKS+=("- $1: $2")
	[ "$1" = ok ] || fail=1
	log "$1: $2"
}
if [ "$tp_status" = 0 ]; then check ok "tapproxy exited 0 after SIGTERM"; else check FAIL "tapproxy exited with status $tp_status"; fi
read -r n rss_first rss_last rss_max r0 r1 g0 g1 gmax fmax < <(awk -F'\t' 'NR > 2 {n++; r[n] = $2; g[n] = $3; f[n] = $4}
	END {
		k = int(n / 3); if (k < 1) k = 1
		for (i = 1; i <= n; i++) { rm = (r[i] > rm ? r[i] : rm); gm = (g[i] > gm ? g[i] : gm); fm = (f[i] > fm ? f[i] : fm) }
		for (i = 1; i <= k; i++) { a += r[i]; g0 = (g[i] > g0 ? g[i] : g0) }
		for (i = n - k + 1; i <= n; i++) { b += r[i]; g1 = (g[i] > g1 ? g[i] : g1) }
		printf "%d %d %d %d %d %d %d %d %d %d\n", n, r[1], r[n], rm, a / k, b / k, g0, g1, gm, fm
	}' "$WORK/samples.tsv")
if [ "$r1" -le $((r0 + r0 / 5 + 8192)) ]; then
	check ok "RSS flat: last third ${r1} KiB vs first third ${r0} KiB (bound +20 % + 8 MiB)"
else
	check FAIL "RSS grew: last third ${r1} KiB vs first third ${r0} KiB"
fi
if [ "$g1" -le $((g0 + 16)) ]; then
	check ok "goroutines flat: max $g0 in the first third, $g1 in the last"
else
	check FAIL "goroutines grew: max $g0 in the first third, $g1 in the last"
fi
if [ "$fmax" -le "$MAX_INFLIGHT" ]; then
	check ok "in_flight at most $fmax (cap $MAX_INFLIGHT)"
else
	check FAIL "in_flight reached $fmax, above the cap $MAX_INFLIGHT"
fi
AFTER=$(tail -n 1 "$WORK/samples.tsv")
kd=$(($(cut -f5 <<<"$AFTER") - $(cut -f5 <<<"$BEFORE")))
ckd=$(($(cut -f6 <<<"$AFTER") - $(cut -f6 <<<"$BEFORE")))
full=$(($(cut -f7 <<<"$AFTER") - $(cut -f7 <<<"$BEFORE")))
to=$(($(cut -f9 <<<"$AFTER") - $(cut -f9 <<<"$BEFORE")))
offered=$(awk -v s="$fsent" -v p="$(dp "$WORK/probe.dnsperf" sent)" -v t="$fsecs" 'BEGIN {printf "%.0f", (t > 0 ? (s + p) / t : 0)}')
if [ $((kd + full)) -gt 0 ]; then
	check ok "drops visible: $kd kernel drops ($ckd on the client socket), $full dropped_inflight_full"
elif [ "$offered" -ge $((CAPACITY * 3 / 2)) ]; then
	check FAIL "offered $offered qps (capacity $CAPACITY) but no kernel or full-table drop was counted"
else
	check ok "no drops, but dnsperf offered only $offered qps (capacity $CAPACITY): the load generator, not tapproxy, was the limit"
fi
if [ -n "$RECOVERY" ]; then
	check ok "recovered: a ${RECOVERY_QPS} qps run lost nothing ${RECOVERY} s after the load (run $RECOVERY_RUNS)"
else
	check FAIL "no lossless ${RECOVERY_QPS} qps run within ${RECOVERY_MAX} s after the load"
fi
if [ -z "$line" ]; then
	check FAIL "no final counters line"
else
	echo "$line" | tr ' ' '\n' | grep -E '^[a-z_]+=[0-9]+$' >"$WORK/counters" || true
	c() { awk -F= -v k="$1" '$1 == k {v = $2} END {print v + 0}' "$WORK/counters"; }
	inv() { # NAME LHS RHS...
		local name=$1 lhs=$2 sum=0 k
		shift 2
		for k in "$@"; do sum=$((sum + $(c "$k"))); done
		if [ "$(c "$lhs")" -eq "$sum" ]; then
			check ok "accounting ($name): $lhs=$(c "$lhs") = $(echo "$*" | tr ' ' '+')"
		else
			check FAIL "accounting ($name): $lhs=$(c "$lhs") != $sum ($*)"
		fi
	}
	inv client received dropped_short dropped_qr refused_acl dropped_acl dropped_inflight_full \
		send_failed servfail_all_down loop_detected dropped_panic forwarded
	inv forwarded forwarded answered timed_out reply_failed
	inv responses resp_received resp_matched resp_short resp_not_response resp_wrong_source \
		resp_unknown_id resp_late resp_question_mismatch resp_panic
	if [ "$(c panics)" -eq 0 ]; then check ok "no panics"; else check FAIL "panics=$(c panics)"; fi
fi

# --- report -----------------------------------------------------------------------
report() {
	echo "## tapproxy at 2× capacity, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "- command: \`$COMMAND_LINE\` (OVERLOAD_TIME=$OVERLOAD_TIME CAPACITY_TIME=$CAPACITY_TIME SAMPLE_EVERY=$SAMPLE_EVERY)"
	echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r); git $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)"
	echo "- layout: tapproxy ${PROXY_ARGS[*]} (GOGC=$OVERLOAD_GOGC)$([ ${#PIN_PROXY[@]} -gt 0 ] && echo " on CPU $PROXY_CPU; the paced sender, dnsperf and the responder on CPU $LOAD_CPU")"
	echo "- capacity: $CAPACITY qps (dnsperf -c $DNSPERF_CLIENTS -q 200, no rate limit, ${CAPACITY_TIME} s; lost $(dp "$WORK/capacity.dnsperf" lost))"
	echo "- overload: paced sender at $TARGET qps for ${DURATION} s: sent $fsent in $fsecs s ($fskipped behind schedule and skipped, $ferrs send errors; $freplies replies); offered in all $offered qps"
	echo "- a client during the overload: dnsperf -Q $PROBE_QPS -q 2000 -t 1: sent $(dp "$WORK/probe.dnsperf" sent), completed $(dp "$WORK/probe.dnsperf" completed), lost $(dp "$WORK/probe.dnsperf" lost), average latency $(awk '/Average Latency \(s\):/ {printf "%.0f µs", $4 * 1e6}' "$WORK/probe.dnsperf")"
	echo
	echo "| figure | value |"
	echo "|---|---:|"
	echo "| samples (every ${SAMPLE_EVERY} s) | $n |"
	echo "| RSS first / last / max (KiB) | $rss_first / $rss_last / $rss_max |"
	echo "| RSS mean, first third / last third (KiB) | $r0 / $r1 |"
	echo "| goroutines max | $gmax |"
	echo "| in_flight max (cap) | $fmax ($MAX_INFLIGHT) |"
	echo "| kernel drops during the run (client socket) | $kd ($ckd) |"
	echo "| dropped_inflight_full during the run | $full |"
	echo "| timed_out during the run | $to |"
	echo "| recovery (s after the load, to a lossless ${RECOVERY_QPS} qps run) | ${RECOVERY:-none within $RECOVERY_MAX s} |"
	echo
	printf '%s\n' "${CHECKS[@]}"
	echo
	echo "<details><summary>samples</summary>"
	echo
	echo '```'
	cat "$WORK/samples.tsv"
	[ -n "$line" ] && echo "final counters (non-zero): $(tr '\n' ' ' <"$WORK/counters" | tr ' ' '\n' | grep -v '=0$' | tr '\n' ' ')"
	echo '```'
	echo
	echo "</details>"
}
report >"$WORK/report.md"
cat "$WORK/report.md"
if [ -n "$OUT" ]; then
	{ cat "$WORK/report.md"; echo; } >>"$OUT"
	log "appended to $OUT"
fi
[ "$fail" = 0 ] || die "see above (KEEP=1 keeps $WORK)"
log "PASS"
