#!/usr/bin/env bash
# bench/scale.sh: many-core scaling of tapproxy. qps against tapproxy with 1..N
# workers (N = min(12, nproc-4) by default), each worker count on as many
# dedicated CPUs, load from several dnsperf processes in parallel on the
# remaining CPUs, the reference responder there too. Prints a table of workers
# vs qps and efficiency vs linear. Builds nothing; bounded (the total run time
# is printed before anything starts; default under 4 minutes). Loopback only.
#
#   bench/scale.sh --tapproxy BIN --responder BIN [--tools DIR] [--out FILE]
#                  [--max-workers N] [--workers "1 2 4 8"] [--duration S]
#                  [--budget S] [--procs P] [--clients C] [--outstanding Q]
#
# Environment variables TAPPROXY, RESPONDER, TOOLS, OUT, MAX_WORKERS,
# WORKERS, DURATION, BUDGET, PROCS, CLIENTS, OUTSTANDING and TAPPROXY_ARGS
# (extra tapproxy flags) work too; flags win. --tools DIR is a bundle made by
# bench/bundle-tools.sh (dnsperf and taskset that run on a bare machine).
set -u -o pipefail

TAPPROXY=${TAPPROXY:-}
RESPONDER=${RESPONDER:-}
TOOLS=${TOOLS:-}
OUT=${OUT:-}
MAX_WORKERS=${MAX_WORKERS:-}
WORKERS=${WORKERS:-}
DURATION=${DURATION:-10}
BUDGET=${BUDGET:-210}
PROCS=${PROCS:-}
CLIENTS=${CLIENTS:-32}
OUTSTANDING=${OUTSTANDING:-500}
TAPPROXY_ARGS=${TAPPROXY_ARGS:-}
RESP_PORT=${RESP_PORT:-15410}
PROXY_PORT=${PROXY_PORT:-15411}
OVERHEAD=6 # seconds per point beyond DURATION: start, dnsperf -t 1 tail, drain and stop (measured ~3-6 s)

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
COMMAND_LINE="$0 $*"
while [ $# -gt 0 ]; do
	case "$1" in
	--tapproxy) TAPPROXY=$2; shift ;;
	--responder) RESPONDER=$2; shift ;;
	--tools) TOOLS=$2; shift ;;
	--out) OUT=$2; shift ;;
	--max-workers) MAX_WORKERS=$2; shift ;;
	--workers) WORKERS=$2; shift ;;
	--duration) DURATION=$2; shift ;;
	--budget) BUDGET=$2; shift ;;
	--procs) PROCS=$2; shift ;;
	--clients) CLIENTS=$2; shift ;;
	--outstanding) OUTSTANDING=$2; shift ;;
	-h | --help) usage 0 ;;
	*) echo "scale.sh: unknown argument $1" >&2; usage 2 ;;
	esac
	shift
done

die() { echo "scale.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }

if [ -n "$TOOLS" ]; then
	TOOLS=$(cd "$TOOLS" && pwd) || die "--tools $TOOLS: no such directory"
	PATH=$TOOLS:$PATH
fi
[ -n "$TAPPROXY" ] && [ -x "$TAPPROXY" ] || die "--tapproxy BIN (an executable tapproxy) is required"
[ -n "$RESPONDER" ] && [ -x "$RESPONDER" ] || die "--responder BIN (bench/cmd/responder, built) is required"
for t in dnsperf taskset getconf awk; do
	command -v "$t" >/dev/null || die "$t not found (make a bundle with bench/bundle-tools.sh and pass --tools)"
done
dnsperf -h 2>&1 | grep -q '^Version' || die "dnsperf does not run: $(dnsperf -h 2>&1 | head -n 2)"

NCPU=$(nproc)
CLK_TCK=$(getconf CLK_TCK)
if [ -z "$MAX_WORKERS" ]; then
	MAX_WORKERS=$((NCPU - 4))
	[ "$MAX_WORKERS" -gt 12 ] && MAX_WORKERS=12
	[ "$MAX_WORKERS" -lt 1 ] && MAX_WORKERS=1
fi
[ "$MAX_WORKERS" -lt "$NCPU" ] || die "--max-workers $MAX_WORKERS leaves no CPU for the load ($NCPU CPUs)"
# Proxy CPUs: 0..W-1 for W workers. Load CPUs (dnsperf and responder):
# MAX_WORKERS..NCPU-1, the same for every point.
LOAD_SET="$MAX_WORKERS-$((NCPU - 1))"
NLOAD=$((NCPU - MAX_WORKERS))
[ -z "$PROCS" ] && PROCS=$NLOAD
RESP_SOCKETS=$NLOAD

if [ -z "$WORKERS" ]; then
	WORKERS=$(seq 1 "$MAX_WORKERS" | tr '\n' ' ')
fi
read -r -a WLIST <<<"$WORKERS"
for w in "${WLIST[@]}"; do
	[ "$w" -ge 1 ] && [ "$w" -le "$MAX_WORKERS" ] || die "worker count $w outside 1..$MAX_WORKERS"
done

# Fit the budget: shorten DURATION (not below 5 s), then thin the list.
points=$((${#WLIST[@]} + 1)) # + the direct calibration point
fit=$((BUDGET / points - OVERHEAD))
if [ "$fit" -lt "$DURATION" ]; then
	if [ "$fit" -lt 5 ]; then
		thin=()
		for w in "${WLIST[@]}"; do
			if [ "$w" -le 2 ] || [ $((w % 2)) -eq 0 ] || [ "$w" -eq "$MAX_WORKERS" ]; then thin+=("$w"); fi
		done
		WLIST=("${thin[@]}")
		points=$((${#WLIST[@]} + 1))
		fit=$((BUDGET / points - OVERHEAD))
	fi
	[ "$fit" -lt 3 ] && fit=3
	[ "$fit" -lt "$DURATION" ] && log "shortening --duration from $DURATION to $fit s to fit --budget $BUDGET s"
	[ "$fit" -lt "$DURATION" ] && DURATION=$fit
fi
TOTAL=$((points * (DURATION + OVERHEAD)))
log "$NCPU CPUs: tapproxy on CPUs 0..W-1; responder ($RESP_SOCKETS sockets) and $PROCS dnsperf process(es) on CPUs $LOAD_SET"
log "points: direct + workers ${WLIST[*]}; ${DURATION}s each; total about ${TOTAL}s ($((TOTAL / 60)) min $((TOTAL % 60)) s)"

WORK=$(mktemp -d /tmp/tapproxy-scale.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

alive() { kill -0 "$1" 2>/dev/null; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'; }
wait_for() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		eval "$1" && return 0
		sleep 0.1
	done
	return 1
}
stop_pid() {
	local i
	kill -TERM "$1" 2>/dev/null
	for ((i = 0; i < 50; i++)); do alive "$1" || break; sleep 0.1; done
	alive "$1" && kill -KILL "$1" 2>/dev/null
	wait "$1" 2>/dev/null
}
# cpu_stat: "cpuN busy total" for every CPU from /proc/stat, in ticks.
cpu_stat() {
	awk '/^cpu[0-9]/ {b = $2 + $3 + $4 + $7 + $8 + $9; print $1, b, b + $5 + $6}' /proc/stat
}
# busy_pct BEFORE AFTER FIRST LAST: busy % of CPUs FIRST..LAST between snapshots.
busy_pct() {
	awk -v f="$3" -v l="$4" 'NR == FNR {b0[$1] = $2; t0[$1] = $3; next}
		{n = substr($1, 4) + 0; if (n >= f && n <= l) {b += $2 - b0[$1]; t += $3 - t0[$1]}}
		END {if (t > 0) printf "%.0f%%", 100 * b / t; else print "-"}' "$1" "$2"
}

QF=$WORK/queries.txt
awk 'BEGIN {
	for (i = 0; i < 10000; i++) {
		k = i % 10
		if (k < 4) print "host" i ".bench.test A"
		else if (k < 7) print "host" i ".bench.test AAAA"
		else if (k < 8) print "txt" i ".bench.test TXT"
		else print "miss" i ".nx.bench.test A"
	}
}' >"$QF"

taskset -c "$LOAD_SET" "$RESPONDER" --listen "127.0.0.1:$RESP_PORT" --sockets "$RESP_SOCKETS" \
	--ready-file "$WORK/responder.ready" >"$WORK/responder.log" 2>&1 &
RESP_PID=$!
PIDS+=("$RESP_PID")
wait_for "[ -s '$WORK/responder.ready' ] || ! alive $RESP_PID" 10 && [ -s "$WORK/responder.ready" ] ||
	die "responder did not start: $(cat "$WORK/responder.log")"

# load PORT TAG: PROCS dnsperf processes in parallel; prints "qps lost wall_s".
load() {
	local port=$1 tag=$2 i pids=()
	local t0 t1
	t0=$(date +%s.%N)
	for ((i = 0; i < PROCS; i++)); do
		taskset -c "$LOAD_SET" dnsperf -s 127.0.0.1 -p "$port" -d "$QF" -l "$DURATION" -T 1 -e \
			-c "$CLIENTS" -q "$OUTSTANDING" -t 1 >"$WORK/$tag.$i.dnsperf" 2>&1 &
		pids+=($!)
	done
	for i in "${pids[@]}"; do wait "$i"; done
	t1=$(date +%s.%N)
	cat "$WORK/$tag".*.dnsperf | awk -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" '
		/Queries per second:/ {q += $4; n++}
		/Queries lost:/ {l += $3}
		END {printf "%.0f %d %.2f %d\n", q, l, w, n}'
}

ROWS=$WORK/rows.txt
: >"$ROWS"
i=0
# Direct: the ceiling of this load setup (dnsperf + responder on the load CPUs).
i=$((i + 1))
log "[$i/$points] direct to the responder (load-side ceiling), ${DURATION}s"
s0=$WORK/s0 s1=$WORK/s1
cpu_stat >"$s0"
read -r qps lost wall nres <<<"$(load "$RESP_PORT" direct)"
cpu_stat >"$s1"
[ "$nres" = "$PROCS" ] || log "  only $nres of $PROCS dnsperf processes reported: $(head -n 3 "$WORK"/direct.0.dnsperf)"
DIRECT=$qps
lbusy=$(busy_pct "$s0" "$s1" "$MAX_WORKERS" $((NCPU - 1)))
echo "direct - $qps - - $lbusy $lost" >>"$ROWS"
log "  direct: $qps qps, load CPUs busy $lbusy, lost $lost"

Q1=""
for w in "${WLIST[@]}"; do
	i=$((i + 1))
	log "[$i/$points] tapproxy --workers $w on CPUs 0-$((w - 1)), ${DURATION}s"
	# shellcheck disable=SC2086 # TAPPROXY_ARGS is a list of flags
	taskset -c "0-$((w - 1))" "$TAPPROXY" --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$RESP_PORT" \
		--workers "$w" $TAPPROXY_ARGS >"$WORK/proxy.$w.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	if ! wait_for "grep -qs 'msg=ready' '$WORK/proxy.$w.log' || ! alive $pid" 10 || ! grep -q 'msg=ready' "$WORK/proxy.$w.log"; then
		log "  tapproxy did not become ready: $(head -n 3 "$WORK/proxy.$w.log")"
		stop_pid "$pid"
		echo "$w 0-$((w - 1)) - - - - - tapproxy not ready" >>"$ROWS"
		continue
	fi
	c0=$(cpu_ticks "$pid")
	cpu_stat >"$s0"
	read -r qps lost wall nres <<<"$(load "$PROXY_PORT" "w$w")"
	cpu_stat >"$s1"
	c1=$(cpu_ticks "$pid")
	stop_pid "$pid"
	grep -h 'final counters' "$WORK/proxy.$w.log" | sed "s/.*msg=\"final counters\" /workers=$w: /" >>"$WORK/counters.txt"
	[ -z "$Q1" ] && [ "$w" = 1 ] && Q1=$qps
	cores=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v wall="$wall" 'BEGIN {printf "%.2f", d / hz / wall}')
	pbusy=$(busy_pct "$s0" "$s1" 0 $((w - 1)))
	lbusy=$(busy_pct "$s0" "$s1" "$MAX_WORKERS" $((NCPU - 1)))
	echo "$w 0-$((w - 1)) $qps $cores $pbusy $lbusy $lost" >>"$ROWS"
	log "  $qps qps, tapproxy $cores CPUs, proxy CPUs busy $pbusy, load CPUs busy $lbusy, lost $lost"
done

report() {
	echo "## tapproxy scaling, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "- command: \`$COMMAND_LINE\`"
	echo "- machine: $NCPU CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
	echo "- dnsperf $(dnsperf -h 2>&1 | awk '/^Version/ {print $2}'); tapproxy: $("$TAPPROXY" version 2>&1 | head -n 1)"
	echo "- tapproxy --workers W pinned to CPUs 0..W-1 (taskset, all threads)${TAPPROXY_ARGS:+, extra flags: $TAPPROXY_ARGS}; responder ($RESP_SOCKETS SO_REUSEPORT sockets) and $PROCS × \`dnsperf -T 1 -c $CLIENTS -q $OUTSTANDING -t 1 -e -l $DURATION\` on CPUs $LOAD_SET"
	echo
	echo "| workers | qps | qps/worker | vs linear | tapproxy CPUs used | proxy CPUs busy | load CPUs busy | lost | note |"
	echo "|---:|---:|---:|---:|---:|---:|---:|---:|---|"
	awk -v q1="${Q1:-0}" -v direct="$DIRECT" '
		$1 == "direct" { printf "| direct (no proxy) | %s | | | | | %s | %s | load-side ceiling |\n", $3, $6, $7; next }
		$3 == "-" { printf "| %s | - | | | | | | | %s %s %s |\n", $1, $8, $9, $10; next }
		{
			w = $1; q = $3
			eff = (q1 > 0) ? sprintf("%.0f%%", 100 * q / (w * q1)) : "-"
			note = ""
			lb = $6; sub("%", "", lb)
			if (lb + 0 >= 90) note = "load CPUs saturated: load-bound"
			if (direct > 0 && q >= 0.9 * direct) note = "at the load-side ceiling"
			printf "| %s | %s | %.0f | %s | %s | %s | %s | %s | %s |\n", w, q, q / w, eff, $4, $5, $6, $7, note
		}' "$ROWS"
	echo
	echo "vs linear = qps / (workers × qps at 1 worker). A point whose load CPUs are saturated, or that reaches the direct ceiling, measures the load generator, not tapproxy: rerun with fewer --max-workers (more load CPUs) or on a bigger machine."
	if [ -s "$WORK/counters.txt" ]; then
		echo
		echo "<details><summary>tapproxy final counters</summary>"
		echo
		echo '```'
		cat "$WORK/counters.txt"
		echo '```'
		echo
		echo "</details>"
	fi
}
report >"$WORK/report.md"
stop_pid "$RESP_PID"
cat "$WORK/report.md"
if [ -n "$OUT" ]; then
	{ cat "$WORK/report.md"; echo; } >>"$OUT"
	log "appended to $OUT"
fi
