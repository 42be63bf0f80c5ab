#!/usr/bin/env bash
# bench/profile.sh OUTDIR MODE... : CPU profiles of tapproxy (one worker,
# alone on PROXY_CPU) at full dnsperf load, per MODE: plain (no logging),
# unix (dnstap to fstrm_capture on a unix socket), file (dnstap to a file
# in /dev/shm). For each mode OUTDIR gets MODE.pprof.http (the raw HTTP
# response of /debug/pprof/profile: strip the headers before `go tool
# pprof`), MODE.dnsperf and MODE.cpu (proxy CPU ticks and answers during
# the profile). Needs no curl: the profile is fetched with bash's /dev/tcp.
# Tools from PATH (a bench/bundle-tools.sh bundle works):
#   PATH=$PWD/bin/benchtools:$PATH bench/profile.sh /tmp/prof plain unix file
# Environment: TAPPROXY, RESPONDER (binaries), PROXY_CPU (1), LOAD_CPUS
# (2-5), SECONDS_LOAD (12), PROFILE_SECONDS (6). Loopback only, bounded.
set -eu -o pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUTDIR MODE..." >&2; exit 2; }
OUT=$1
shift
mkdir -p "$OUT"
TAPPROXY=${TAPPROXY:-bin/tapproxy}
RESPONDER=${RESPONDER:-bin/responder}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPUS=${LOAD_CPUS:-2-5}
SECONDS_LOAD=${SECONDS_LOAD:-12}
PROFILE_SECONDS=${PROFILE_SECONDS:-6}
RESP_PORT=15410 PROXY_PORT=15411 METRICS_PORT=15412
WORK=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
for i in $(seq 0 9999); do
	case $((i % 4)) in 0) t=A ;; 1) t=AAAA ;; 2) t=TXT ;; 3) t=A ;; esac
	echo "h$i.bench.test $t"
done >"$WORK/queries"
taskset -c "$LOAD_CPUS" "$RESPONDER" --listen "127.0.0.1:$RESP_PORT" >"$WORK/responder.log" 2>&1 &
pids+=($!)
sleep 0.5
for mode in "$@"; do
	extra=()
	case $mode in
	plain) ;;
	unix)
		rm -f "$WORK/cap.sock"
		taskset -c "$LOAD_CPUS" fstrm_capture -t protobuf:dnstap.Dnstap -u "$WORK/cap.sock" -w /dev/null >"$WORK/cap.log" 2>&1 &
		cap=$!
		for _ in $(seq 50); do [ -S "$WORK/cap.sock" ] && break; sleep 0.1; done
		extra=(--dnstap-unix "$WORK/cap.sock")
		;;
	file) extra=(--dnstap-file /dev/shm/profile.fstrm) ;;
	*) echo "unknown mode $mode" >&2; exit 2 ;;
	esac
	taskset -c "$PROXY_CPU" "$TAPPROXY" --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$RESP_PORT" \
		--workers 1 --tcp=false --metrics "127.0.0.1:$METRICS_PORT" --metrics-pprof "${extra[@]}" >"$OUT/$mode.log" 2>&1 &
	tp=$!
	for _ in $(seq 50); do grep -q 'msg=ready' "$OUT/$mode.log" && break; sleep 0.1; done
	taskset -c "$LOAD_CPUS" dnsperf -s 127.0.0.1 -p "$PROXY_PORT" -d "$WORK/queries" -c 8 -q 200 -t 2 -l "$SECONDS_LOAD" >"$OUT/$mode.dnsperf" 2>&1 &
	dp=$!
	sleep 2
	a=$(awk '{print $14 + $15}' "/proc/$tp/stat")
	exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT"
	printf 'GET /debug/pprof/profile?seconds=%s HTTP/1.0\r\nHost: x\r\n\r\n' "$PROFILE_SECONDS" >&3
	cat <&3 >"$OUT/$mode.pprof.http"
	exec 3<&-
	b=$(awk '{print $14 + $15}' "/proc/$tp/stat")
	echo "mode=$mode proxy_cpu_ticks_during_profile=$((b - a)) profile_seconds=$PROFILE_SECONDS clk_tck=$(getconf CLK_TCK)" >"$OUT/$mode.cpu"
	wait "$dp" || true
	kill "$tp"
	wait "$tp" || true
	[ "$mode" = unix ] && { kill "$cap"; wait "$cap" || true; }
	rm -f /dev/shm/profile.fstrm
	grep -E 'Queries per second' "$OUT/$mode.dnsperf" | sed "s/^/$mode: /" >>"$OUT/$mode.cpu"
	grep -o 'final counters.*' "$OUT/$mode.log" | tr ' ' '\n' | grep -E '^(received|answered|dnstap_written|dnstap_dropped_queue_full)=' | tr '\n' ' ' >>"$OUT/$mode.cpu"
	echo >>"$OUT/$mode.cpu"
	cat "$OUT/$mode.cpu"
done
