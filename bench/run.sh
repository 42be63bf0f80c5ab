#!/usr/bin/env bash
# bench/run.sh: dnsperf comparison of tapproxy against the upstream directly
# and against dnsdist, with and without dnstap logging. Loopback only; every
# load is bounded by dnsperf -l. See bench/README.md.
#
#   bench/run.sh [--quick] [--rounds N] [--duration S] [--rate QPS] [--out FILE]
#                [--contestants LIST] [--tapproxy BIN] [--responder BIN] [--keep]
#
# Environment variables of the same names (ROUNDS, DURATION, RATE, OUT,
# CONTESTANTS, TAPPROXY, RESPONDER, QUICK=1) work too; flags win.
set -u -o pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
RATE=${RATE:-20000}
OUT=${OUT:-}
CONTESTANTS=${CONTESTANTS:-direct,direct-cross,tapproxy,tapproxy-dnstap,dnsdist,dnsdist-dnstap}
TAPPROXY=${TAPPROXY:-}
RESPONDER=${RESPONDER:-}
QUICK=${QUICK:-0}
KEEP=${KEEP:-0}
# dnsperf settings (documented in bench/README.md).
DNSPERF_CLIENTS=${DNSPERF_CLIENTS:-8}      # -c: client sockets
DNSPERF_OUTSTANDING=${DNSPERF_OUTSTANDING:-200} # -q: max queries in flight
DNSPERF_TIMEOUT=${DNSPERF_TIMEOUT:-2}      # -t: seconds before a query counts as lost
DNSPERF_EDNS=${DNSPERF_EDNS:-1}            # 1: -e (EDNS0 OPT in every query)
QUERIES=${QUERIES:-10000}                  # lines in the generated query file
# CPU layout: the proxy under test alone on PROXY_CPU; dnsperf, the
# responder and the dnstap collector share LOAD_CPU.
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
RESP_CPU=$LOAD_CPU # the responder's CPU; PROXY_CPU for direct-cross
RESP_PORT=${RESP_PORT:-15400}
PROXY_PORT=${PROXY_PORT:-15401}
RESP_SOCKETS=${RESP_SOCKETS:-1}

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
COMMAND_LINE="$0 $*"
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) QUICK=1 ;;
	--rounds) ROUNDS=$2; shift ;;
	--duration) DURATION=$2; shift ;;
	--rate) RATE=$2; shift ;;
	--out) OUT=$2; shift ;;
	--contestants) CONTESTANTS=$2; shift ;;
	--tapproxy) TAPPROXY=$2; shift ;;
	--responder) RESPONDER=$2; shift ;;
	--keep) KEEP=1 ;;
	-h | --help) usage 0 ;;
	*) echo "run.sh: unknown argument $1" >&2; usage 2 ;;
	esac
	shift
done
if [ "$QUICK" = 1 ]; then
	ROUNDS=1
	DURATION=3
fi

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
for t in dnsperf taskset getconf dig awk; do
	command -v "$t" >/dev/null || die "$t is required (apt-get install dnsperf util-linux bind9-dnsutils)"
done
if ! [[ $DURATION =~ ^[0-9]+$ ]] || [ "$DURATION" -lt 3 ]; then
	die "--duration must be a whole number of seconds, at least 3 (the CPU-busy sample skips 1 s at each end)"
fi
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (proxy on CPU $PROXY_CPU, load on CPU $LOAD_CPU)"
CLK_TCK=$(getconf CLK_TCK)

WORK=$(mktemp -d /tmp/tapproxy-bench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	if [ "$KEEP" = 1 ]; then
		log "work files kept in $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- binaries
if [ -z "$RESPONDER" ]; then
	RESPONDER=$WORK/responder
	(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$RESPONDER" ./bench/cmd/responder) || die "building the responder failed"
fi
TAPPROXY_NA=""
if [ -z "$TAPPROXY" ]; then
	TAPPROXY=$WORK/tapproxy
	# Built as the packages build it (static, CGO_ENABLED=0 -trimpath; they
	# also strip symbols, which changes no figure here): a cgo build maps
	# libc and ld.so as well, 2 MiB more peak RSS (bench/RESULTS.md).
	if ! (cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$TAPPROXY" ./cmd/tapproxy) >"$WORK/tapproxy-build.log" 2>&1; then
		TAPPROXY_NA="go build ./cmd/tapproxy failed: $(head -c 200 "$WORK/tapproxy-build.log" | tr '\n' ' ')"
	fi
elif [ ! -x "$TAPPROXY" ]; then
	TAPPROXY_NA="$TAPPROXY is not executable"
fi

# ---------------------------------------------------------------- queries
# A fixed mix under bench.test.: 40% A, 30% AAAA, 10% TXT, 20% NXDOMAIN
# (names under nx.bench.test.). Every name is distinct within the file.
QF=$WORK/queries.txt
awk -v n="$QUERIES" 'BEGIN {
	for (i = 0; i < n; i++) {
		k = i % 10
		if (k < 4) print "host" i ".bench.test A"
		else if (k < 7) print "host" i ".bench.test AAAA"
		else if (k < 8) print "txt" i ".bench.test TXT"
		else print "miss" i ".nx.bench.test A"
	}
}' >"$QF"

# ---------------------------------------------------------------- helpers
# cpu_ticks PID: utime+stime of the whole process (all threads), in ticks.
cpu_ticks() {
	# Fields after the ")" that ends comm: state is 1, utime 12, stime 13.
	sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'
}
# cpu_busy_snap: "cpuN busy total" per CPU from /proc/stat (busy = all but
# idle and iowait), for cpu_busy_pct.
cpu_busy_snap() { awk '/^cpu[0-9]/ {print $1, $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
# cpu_busy_pct SNAP0 SNAP1 CPU: percent of CPU busy between the snapshots.
cpu_busy_pct() {
	awk -v a="$1" -v b="$2" -v c="cpu$3" 'BEGIN {
		n = split(a, x, "\n"); split(b, y, "\n")
		for (i = 1; i <= n; i++) {
			split(x[i], p, " "); split(y[i], q, " ")
			if (p[1] == c && q[3] > p[3]) { printf "%.0f", 100 * (q[2] - p[2]) / (q[3] - p[3]); exit }
		}
		print "-"
	}'
}
vm_hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
alive() { kill -0 "$1" 2>/dev/null; }
file_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pid() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null
	for ((i = 0; i < 100; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	if alive "$pid"; then
		log "pid $pid ignored SIGTERM for 10 s; killing"
		kill -KILL "$pid" 2>/dev/null
	fi
	wait "$pid" 2>/dev/null
	local keep=() p
	for p in "${PIDS[@]}"; do [ "$p" != "$pid" ] && keep+=("$p"); done
	PIDS=("${keep[@]}")
}

# wait_for COND_CMD SECONDS: poll a command until it succeeds.
wait_for() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		eval "$1" && return 0
		sleep 0.1
	done
	return 1
}

# probe PORT: one A query through the contestant; true if answered
# correctly. Every call is counted in $RUN/probes: the probes' dnstap
# messages are part of the collector's file.
probe() {
	echo x >>"$RUN/probes"
	dig +short +tries=1 +time=1 @127.0.0.1 -p "$1" probe.bench.test A 2>/dev/null | grep -qx 192.0.2.1
}

# wait_stable FILE: wait until FILE stops growing (up to 15 s). Producers
# flush dnstap about once a second.
wait_stable() {
	local a b i
	a=$(file_size "$1")
	for ((i = 0; i < 10; i++)); do
		sleep 1.5
		b=$(file_size "$1")
		[ "$a" = "$b" ] && return 0
		a=$b
	done
	return 1
}

# dnsperf_run TAG [extra args]: one bounded dnsperf run against the
# contestant, pinned to LOAD_CPU; the output goes to $RUN/TAG.dnsperf.
dnsperf_run() {
	local tag=$1
	shift
	local args=(-s 127.0.0.1 -p "$PORT" -d "$QF" -l "$DURATION" -T 1
		-c "$DNSPERF_CLIENTS" -q "$DNSPERF_OUTSTANDING" -t "$DNSPERF_TIMEOUT" "$@")
	[ "$DNSPERF_EDNS" = 1 ] && args+=(-e)
	echo "taskset -c $LOAD_CPU dnsperf ${args[*]}" >"$RUN/$tag.cmd"
	taskset -c "$LOAD_CPU" dnsperf "${args[@]}" >"$RUN/$tag.dnsperf" 2>&1
}
# dnsperf_get FILE KEY: completed, lost, qps, latency_us.
dnsperf_get() {
	case "$2" in
	completed) awk '/Queries completed:/ {print $3}' "$1" ;;
	lost) awk '/Queries lost:/ {print $3}' "$1" ;;
	qps) awk '/Queries per second:/ {printf "%.0f\n", $4}' "$1" ;;
	latency_us) awk '/Average Latency \(s\):/ {printf "%.0f\n", $4 * 1e6}' "$1" ;;
	esac
}

# ---------------------------------------------------------------- contestants
# start_contestant NAME: starts the collector (if any) and the proxy (if any)
# on top of an already running responder. Sets PORT, PID (the process whose
# CPU and memory are measured), CAP_PID, CAP_FILE, SOCK. Returns 1 with
# NA_REASON set if the contestant cannot run.
start_contestant() {
	local name=$1
	PORT=$PROXY_PORT PID="" CAP_PID="" CAP_FILE="" NA_REASON="" SOCK=""
	case "$name" in
	direct | direct-cross)
		PORT=$RESP_PORT PID=$RESP_PID
		return 0
		;;
	tapproxy | tapproxy-dnstap)
		[ -n "$TAPPROXY_NA" ] && { NA_REASON=$TAPPROXY_NA; return 1; }
		;;
	dnsdist | dnsdist-dnstap)
		command -v dnsdist >/dev/null || { NA_REASON="dnsdist not installed"; return 1; }
		;;
	*) NA_REASON="unknown contestant"; return 1 ;;
	esac
	local sock=""
	if [[ $name == *-dnstap ]]; then
		if ! command -v fstrm_capture >/dev/null || ! command -v dnstap >/dev/null; then
			NA_REASON="fstrm_capture or dnstap CLI not installed"
			return 1
		fi
		sock=$RUN/dnstap.sock SOCK=$RUN/dnstap.sock
		CAP_FILE=$RUN/dnstap.fstrm
		taskset -c "$LOAD_CPU" fstrm_capture -t protobuf:dnstap.Dnstap -u "$sock" -w "$CAP_FILE" \
			>"$RUN/collector.log" 2>&1 &
		CAP_PID=$!
		PIDS+=("$CAP_PID")
		if ! wait_for "[ -S '$sock' ]" 10; then
			NA_REASON="fstrm_capture did not create $sock"
			return 1
		fi
	fi
	start_proxy "$name"
}

# start_proxy NAME: starts the proxy of contestant NAME (for direct: a fresh
# responder), logging to the collector at $SOCK if set, and waits until it
# answers (and its log reaches the collector). Sets PID; returns 1 with
# NA_REASON set if it cannot run.
start_proxy() {
	local name=$1 sock=$SOCK
	case "$name" in
	direct | direct-cross)
		start_responder
		PID=$RESP_PID
		return 0
		;;
	tapproxy | tapproxy-dnstap)
		local args=(--listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$RESP_PORT" --workers 1)
		[ -n "$sock" ] && args+=(--dnstap-unix "$sock")
		echo "taskset -c $PROXY_CPU $TAPPROXY ${args[*]}" >"$RUN/proxy.cmd"
		taskset -c "$PROXY_CPU" "$TAPPROXY" "${args[@]}" >"$RUN/proxy.log" 2>&1 &
		PID=$!
		PIDS+=("$PID")
		if ! wait_for "grep -qs 'msg=ready' '$RUN/proxy.log' || ! alive $PID" 10 ||
			! grep -q 'msg=ready' "$RUN/proxy.log"; then
			local how="did not log msg=ready within 10 s"
			if ! alive "$PID"; then
				wait "$PID"
				how="exited with status $?"
			fi
			NA_REASON="tapproxy $how: $(head -n 2 "$RUN/proxy.log" | tr '\n\t' '  ' | cut -c1-200)"
			return 1
		fi
		;;
	dnsdist | dnsdist-dnstap)
		local conf=$ROOT/bench/dnsdist-plain.conf
		[ -n "$sock" ] && conf=$ROOT/bench/dnsdist-dnstap.conf
		echo "BENCH_LISTEN=127.0.0.1:$PROXY_PORT BENCH_UPSTREAM=127.0.0.1:$RESP_PORT BENCH_DNSTAP_SOCK=$sock taskset -c $PROXY_CPU dnsdist --supervised --disable-syslog -C $conf" >"$RUN/proxy.cmd"
		BENCH_LISTEN=127.0.0.1:$PROXY_PORT BENCH_UPSTREAM=127.0.0.1:$RESP_PORT BENCH_DNSTAP_SOCK=$sock \
			taskset -c "$PROXY_CPU" dnsdist --supervised --disable-syslog -C "$conf" >"$RUN/proxy.log" 2>&1 &
		PID=$!
		PIDS+=("$PID")
		;;
	esac
	if ! wait_for "probe $PROXY_PORT || ! alive $PID" 10 || ! alive "$PID"; then
		NA_REASON="$name does not answer on 127.0.0.1:$PROXY_PORT: $(head -n 2 "$RUN/proxy.log" | tr '\n\t' '  ' | cut -c1-200)"
		return 1
	fi
	if [ -n "$CAP_FILE" ]; then
		# The producer connects asynchronously (and dnsdist drops what it logs
		# while not connected): wait until the probe's messages arrive.
		local base
		base=$(file_size "$CAP_FILE")
		if ! wait_for "probe $PROXY_PORT >/dev/null; [ \$(file_size '$CAP_FILE') -gt $base ]" 10; then
			NA_REASON="$name did not log the probe query to the collector within 10 s"
			return 1
		fi
	fi
	return 0
}

# start_responder: a fresh reference responder on CPU RESP_CPU (LOAD_CPU,
# except for direct-cross); sets RESP_PID.
start_responder() {
	rm -f "$RUN/responder.ready"
	taskset -c "$RESP_CPU" "$RESPONDER" --listen "127.0.0.1:$RESP_PORT" --sockets "$RESP_SOCKETS" \
		--ready-file "$RUN/responder.ready" >>"$RUN/responder.log" 2>&1 &
	RESP_PID=$!
	PIDS+=("$RESP_PID")
	if ! wait_for "[ -s '$RUN/responder.ready' ] || ! alive $RESP_PID" 10 || [ ! -s "$RUN/responder.ready" ]; then
		die "responder did not start: $(cat "$RUN/responder.log")"
	fi
}

# abandon ROUND NAME REASON: records the contestant's row as NA and stops
# what it started (the proxy, unless it is the responder; the collector; the
# responder).
abandon() {
	printf '%s\t%s\tNA\t%s\n' "$1" "$2" "$(echo "$3" | cut -c1-200)" >>"$WORK/rows.tsv"
	[ -n "$PID" ] && [ "$PID" != "$RESP_PID" ] && stop_pid "$PID"
	[ -n "$CAP_PID" ] && stop_pid "$CAP_PID"
	stop_pid "$RESP_PID"
}

# run_one ROUND NAME: one fresh contestant, both load phases, one TSV row.
# The proxy (for direct, the responder) is started afresh for the fixed-rate
# phase, so its peak RSS is that of a process that only ever served that
# rate: a Go process keeps heap pages an unlimited run touched, and a reset
# of the peak (clear_refs) cannot give them back.
run_one() {
	local round=$1 name=$2
	RUN=$WORK/r$round-$name
	mkdir -p "$RUN"
	: >"$RUN/probes"
	log "round $round: $name"
	# direct-cross: the responder alone on the proxy's CPU, so that
	# every packet crosses between the CPUs as it does through a proxy.
	RESP_CPU=$LOAD_CPU
	[ "$name" = direct-cross ] && RESP_CPU=$PROXY_CPU
	start_responder
	if ! start_contestant "$name"; then
		log "  $name not available: $NA_REASON"
		abandon "$round" "$name" "$NA_REASON"
		return
	fi
	# Phase 1: unlimited rate.
	local c0 c1 c2 c3
	# Which CPU bounds the unlimited run: each CPU's busy share, sampled
	# inside the load (1 s after its start to 1 s before its end).
	local b0 b1 busy_load busy_proxy dp
	c0=$(cpu_ticks "$PID")
	dnsperf_run max &
	dp=$!
	sleep 1
	b0=$(cpu_busy_snap)
	sleep $((DURATION - 2))
	b1=$(cpu_busy_snap)
	wait "$dp"
	c1=$(cpu_ticks "$PID")
	busy_load=$(cpu_busy_pct "$b0" "$b1" "$LOAD_CPU")
	busy_proxy=$(cpu_busy_pct "$b0" "$b1" "$PROXY_CPU")
	local rss_max
	rss_max=$(vm_hwm_kib "$PID")
	if ! alive "$PID"; then
		log "  $name died during the run; see $RUN/proxy.log (use --keep)"
		abandon "$round" "$name" "died during the unlimited run"
		return
	fi
	# Phase 2: fixed rate, on a fresh proxy (see above). What the first
	# one logged reaches the collector before it stops.
	[ -n "$CAP_FILE" ] && { wait_stable "$CAP_FILE" || log "  dnstap file still growing after 15 s"; }
	stop_pid "$PID"
	[ -n "$CAP_FILE" ] && { wait_stable "$CAP_FILE" || true; }
	[ -f "$RUN/proxy.log" ] && mv "$RUN/proxy.log" "$RUN/proxy-max.log"
	if ! start_proxy "$name"; then
		log "  $name did not restart for the fixed-rate run: $NA_REASON"
		abandon "$round" "$name" "restart: $NA_REASON"
		return
	fi
	c2=$(cpu_ticks "$PID")
	dnsperf_run rate -Q "$RATE"
	c3=$(cpu_ticks "$PID")
	local rss
	rss=$(vm_hwm_kib "$PID")
	if ! alive "$PID"; then
		log "  $name died during the run; see $RUN/proxy.log (use --keep)"
		abandon "$round" "$name" "died during the fixed-rate run"
		return
	fi

	local msgs="-"
	if [ -n "$CAP_FILE" ]; then
		wait_stable "$CAP_FILE" || log "  dnstap file still growing after 15 s"
		stop_pid "$PID"
		wait_stable "$CAP_FILE" || true
		stop_pid "$CAP_PID"
		# One line per message in quiet mode; column 2 is the type (CQ, CR...).
		dnstap -r "$CAP_FILE" -q 2>"$RUN/dnstap-read.log" |
			awk '{n[$2]++} END {for (t in n) printf "%s=%d ", t, n[t]; print ""}' >"$RUN/dnstap-types.txt"
		msgs=$(tr ' ' '\n' <"$RUN/dnstap-types.txt" | awk -F= '$2 != "" {s += $2} END {print s + 0}')
		rm -f "$CAP_FILE"
	elif [ "$PID" != "$RESP_PID" ]; then
		stop_pid "$PID"
	fi
	stop_pid "$RESP_PID"
	if [ "$PID" != "$RESP_PID" ]; then
		# Non-zero counters only: the full line has dozens of TCP keys.
		local f phase
		for f in proxy-max proxy; do
			grep -qs 'final counters' "$RUN/$f.log" || continue
			phase=max
			[ "$f" = proxy ] && phase=rate
			echo "round $round $name ($phase run): $(grep -h 'final counters' "$RUN/$f.log" | sed 's/.*msg="final counters" //' |
				tr ' ' '\n' | grep -v '=0$' | tr '\n' ' ')" >>"$WORK/counters.txt"
		done
	fi
	if [ -s "$RUN/dnstap-types.txt" ]; then
		echo "round $round $name dnstap messages by type: $(cat "$RUN/dnstap-types.txt")" >>"$WORK/counters.txt"
	fi

	local m=$RUN/max.dnsperf r=$RUN/rate.dnsperf
	local qps comp1 lost1 comp2 lost2 rqps lat
	qps=$(dnsperf_get "$m" qps) comp1=$(dnsperf_get "$m" completed) lost1=$(dnsperf_get "$m" lost)
	rqps=$(dnsperf_get "$r" qps) comp2=$(dnsperf_get "$r" completed) lost2=$(dnsperf_get "$r" lost)
	lat=$(dnsperf_get "$r" latency_us)
	if [ -z "$qps" ] || [ -z "$rqps" ]; then
		log "  dnsperf gave no statistics; see $RUN (use --keep)"
		printf '%s\t%s\tNA\t%s\n' "$round" "$name" "dnsperf failed" >>"$WORK/rows.tsv"
		return
	fi
	local probes
	probes=$(grep -c . "$RUN/probes")
	[ "$probes" -lt 1 ] && probes=1
	# Computed in awk: CPU seconds = ticks / CLK_TCK.
	awk -v round="$round" -v name="$name" -v qps="$qps" -v comp1="$comp1" -v comp2="$comp2" \
		-v d1=$((c1 - c0)) -v d2=$((c3 - c2)) -v hz="$CLK_TCK" -v rqps="$rqps" -v lat="$lat" \
		-v rss="$rss" -v rss_max="$rss_max" -v lost1="$lost1" -v lost2="$lost2" -v msgs="$msgs" -v probes="$probes" \
		-v busy_load="$busy_load" -v busy_proxy="$busy_proxy" 'BEGIN {
		s1 = d1 / hz; s2 = d2 / hz
		per_cpu = (s1 > 0) ? sprintf("%.0f", comp1 / s1) : "-"
		us_per_q = (comp2 > 0) ? sprintf("%.1f", s2 * 1e6 / comp2) : "-"
		per_ans = (msgs != "-") ? sprintf("%.3f", msgs / (comp1 + comp2 + probes)) : "-"
		printf "%s\t%s\tOK\t%s\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\n", round, name, qps, per_cpu, us_per_q,
			rqps, lat, rss / 1024, per_ans, lost1, lost2, msgs, rss_max / 1024, busy_load, busy_proxy
	}' >>"$WORK/rows.tsv"
	log "  $(tail -n 1 "$WORK/rows.tsv" | cut -f4-)"
}

# ---------------------------------------------------------------- run
# Background load, measured for 2 s before anything starts: on a shared
# machine the numbers below are only as good as this.
idle_check() {
	local a b c
	a=$(cpu_busy_snap)
	sleep 2
	b=$(cpu_busy_snap)
	while read -r c _; do
		printf '%s %s%% ' "$c" "$(cpu_busy_pct "$a" "$b" "${c#cpu}")"
	done <<<"$a"
}
BACKGROUND="$(idle_check)(loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
log "background CPU use before the run: $BACKGROUND"
IFS=, read -r -a LIST <<<"$CONTESTANTS"
# Per contestant: two dnsperf runs and their timeout tails, start/stop, and
# for the dnstap ones about 15 s of flush waits and reading the file.
EST=0
for name in "${LIST[@]}"; do
	EST=$((EST + ROUNDS * (2 * DURATION + 2 * DNSPERF_TIMEOUT + 4)))
	[[ $name == *-dnstap ]] && EST=$((EST + ROUNDS * (15 + DURATION)))
done
log "work dir $WORK; ${#LIST[@]} contestants × $ROUNDS rounds × 2 × ${DURATION}s; about $((EST / 60)) min $((EST % 60)) s"
: >"$WORK/rows.tsv"
: >"$WORK/counters.txt"
for ((round = 1; round <= ROUNDS; round++)); do
	order=("${LIST[@]}")
	if ((round % 2 == 0)); then # alternate the order between rounds
		order=()
		for ((i = ${#LIST[@]} - 1; i >= 0; i--)); do order+=("${LIST[i]}"); done
	fi
	for name in "${order[@]}"; do
		run_one "$round" "$name"
	done
done

# ---------------------------------------------------------------- report
versions() {
	echo "- dnsperf: $(dnsperf -h 2>&1 | awk '/^Version/ {print $2}')"
	command -v dnsdist >/dev/null && echo "- dnsdist: $(dnsdist --version 2>&1 | head -n 1)"
	command -v fstrm_capture >/dev/null && echo "- fstrm_capture: $(dpkg-query -W -f '${Version}' fstrm-bin 2>/dev/null || echo unknown)"
	echo "- go: $(go version 2>/dev/null || echo none)"
	if [ -z "$TAPPROXY_NA" ]; then
		local build
		build=$(go version -m "$TAPPROXY" 2>/dev/null |
			awk '$1 == "build" && ($2 ~ /^CGO_ENABLED=/ || $2 ~ /^-trimpath=/ || $2 ~ /^-ldflags=/) {printf "%s%s", s, $2; s = " "}' || true)
		echo "- tapproxy: $("$TAPPROXY" version 2>&1 | head -n 1) ($TAPPROXY; ${build:-build settings unknown})"
	else
		echo "- tapproxy: not available ($TAPPROXY_NA)"
	fi
	echo "- git: $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)"
}

# median_stdin: the median of the numbers on stdin, one per line ("-" if none).
median_stdin() {
	sort -g | awk '{v[NR] = $1} END {
		if (NR == 0) { print "-"; exit }
		if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2
	}'
}

# median over rounds of column COL for contestant NAME ("-" if none).
median() {
	awk -F'\t' -v n="$1" -v c="$2" '$2 == n && $3 == "OK" && $c != "-" {print $c}' "$WORK/rows.tsv" | median_stdin
}

table() {
	local direct
	direct=$(median direct 4)
	echo "| contestant | max qps | vs direct | CPU busy at max, load / proxy (%) | queries per proxy CPU-s | CPU µs/query @${RATE} qps | achieved qps @${RATE} | avg latency @${RATE} (µs) | peak RSS @${RATE} / max (MiB) | dnstap msgs/answer | lost (max / @${RATE}) |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	local name
	for name in "${LIST[@]}"; do
		if ! awk -F'\t' -v n="$name" '$2 == n && $3 == "OK" {f = 1} END {exit !f}' "$WORK/rows.tsv"; then
			local why
			why=$(awk -F'\t' -v n="$name" '$2 == n && $3 == "NA" {print $4; exit}' "$WORK/rows.tsv" | cut -c1-160 | tr '|' '/')
			echo "| $name | not available ($why) | | | | | | | | | |"
			continue
		fi
		local q ratio label=$name
		q=$(median "$name" 4)
		ratio=$(awk -v a="$q" -v b="$direct" 'BEGIN { if (b > 0 && a != "-") printf "%.2f", a / b; else print "-" }')
		case "$name" in
		direct) label="direct (CPU = responder's)" ;;
		direct-cross) label="direct-cross (responder on CPU $PROXY_CPU)" ;;
		tapproxy*) label="$name (--workers 1)" ;;
		esac
		printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s |\n' "$label" "$q" "$ratio" \
			"$(median "$name" 15) / $(median "$name" 16)" "$(median "$name" 5)" "$(median "$name" 6)" "$(median "$name" 7)" "$(median "$name" 8)" \
			"$(median "$name" 9) / $(median "$name" 14)" "$(median "$name" 10)" "$(median "$name" 11)" "$(median "$name" 12)"
	done
}

# round_ratios A B COL: COL of A / COL of B in each round where both ran,
# then the median of those ratios ("-" when no round has both). Both
# contestants of a round ran minutes apart at most, so on a machine whose
# speed drifts between rounds a ratio per round is steadier than a ratio of
# medians taken over different rounds.
round_ratios() {
	local r
	r=$(awk -F'\t' -v a="$1" -v b="$2" -v c="$3" '
	$3 == "OK" && $c != "-" { if ($2 == a) va[$1] = $c; if ($2 == b) vb[$1] = $c; if ($1 > m) m = $1 }
	END { for (r = 1; r <= m; r++) if ((r in va) && (r in vb) && vb[r] > 0) printf "%.4f\n", va[r] / vb[r] }' "$WORK/rows.tsv")
	if [ -z "$r" ]; then
		echo -
		return
	fi
	printf '%s (median %.2f)\n' "$(awk '{printf "%s%.2f", (NR > 1 ? ", " : ""), $1}' <<<"$r")" "$(median_stdin <<<"$r")"
}

# ratio_lines: the per-round ratios behind the targets, for the pairs that ran.
ratio_lines() {
	local line
	line=$(round_ratios tapproxy-dnstap direct 4)
	[ "$line" != - ] && echo "- max qps, tapproxy-dnstap / direct, per round: $line"
	line=$(round_ratios tapproxy-dnstap dnsdist-dnstap 5)
	[ "$line" != - ] && echo "- queries per proxy CPU-s, tapproxy-dnstap / dnsdist-dnstap, per round: $line"
	line=$(round_ratios tapproxy-dnstap dnsdist-dnstap 6)
	[ "$line" != - ] && echo "- CPU µs/query @${RATE} qps, tapproxy-dnstap / dnsdist-dnstap, per round: $line"
	line=$(round_ratios tapproxy dnsdist 6)
	[ "$line" != - ] && echo "- CPU µs/query @${RATE} qps, tapproxy / dnsdist, per round: $line"
	return 0
}

report() {
	echo "## tapproxy benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "- command: \`$COMMAND_LINE\` (ROUNDS=$ROUNDS DURATION=$DURATION RATE=$RATE QUICK=$QUICK)"
	echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
	versions
	echo "- layout: proxy under test alone on CPU $PROXY_CPU (started under taskset, all threads); dnsperf, responder ($RESP_SOCKETS socket(s)) and fstrm_capture on CPU $LOAD_CPU; tapproxy runs with --workers 1 because it has one CPU; direct-cross: the responder alone on CPU $PROXY_CPU instead (not a ratio base: it shows what crossing between the CPUs costs with no proxy at all)"
	echo "- load: dnsperf -T 1 -c $DNSPERF_CLIENTS -q $DNSPERF_OUTSTANDING -t $DNSPERF_TIMEOUT$([ "$DNSPERF_EDNS" = 1 ] && echo ' -e') -l $DURATION, $QUERIES-line mix (40% A, 30% AAAA, 10% TXT, 20% NXDOMAIN); max = no -Q, then -Q $RATE"
	echo "- each contestant started fresh per round, order reversed on even rounds; medians of $ROUNDS round(s)"
	echo "- background CPU use in the 2 s before the run: $BACKGROUND; loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	table
	echo
	local ratios
	ratios=$(ratio_lines)
	if [ -n "$ratios" ]; then
		echo "$ratios"
		echo
	fi
	echo "Columns: max qps from the unlimited run; CPU busy at max = share of each CPU not idle in the middle of that run (CPU $LOAD_CPU = load, CPU $PROXY_CPU = proxy; near 100 on the load CPU means the load side, not the proxy, set the max); queries per proxy CPU-second = answered queries / (utime+stime) of the proxy in that run; CPU µs/query and latency from the -Q $RATE run; peak RSS = VmHWM of the -Q $RATE run (a fresh process: every proxy, and for direct the responder, is restarted between the two runs) / of the unlimited run; dnstap msgs/answer = messages in the collector's file / answered queries (2.000 = every query and response logged); lost = dnsperf \"Queries lost\"."
	echo
	echo "<details><summary>per-round rows</summary>"
	echo
	echo '```'
	printf 'round\tcontestant\tstatus\tmax_qps\tq_per_cpu_s\tcpu_us_per_q\trate_qps\tlat_us\trss_mib\tmsgs_per_ans\tlost_max\tlost_rate\tdnstap_msgs\trss_max_mib\tbusy_load_pct\tbusy_proxy_pct\n'
	cat "$WORK/rows.tsv"
	if [ -s "$WORK/counters.txt" ]; then
		echo
		echo "# tapproxy final counters (non-zero) and dnstap message types"
		cat "$WORK/counters.txt"
	fi
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
