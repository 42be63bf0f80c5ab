#!/usr/bin/env bash
# bench/wakeup.sh [ROUNDS] [RATE]: prices a Go program's wake-up on this
# machine. Runs bench/cmd/wakeecho (a DNS echo) in each way of waiting for
# datagrams, alone on CPU 1, under `dnsperf -Q RATE` on CPU 0, and prints its
# CPU µs per query, modes alternated per round. Loopback only; each run is
# bounded (8 s of load). See bench/RESULTS.md for what the figures mean.
set -eu -o pipefail
ROUNDS=${1:-3}
RATE=${2:-20000}
PORT=15520
here=$(cd "$(dirname "$0")" && pwd)
for t in dnsperf taskset go; do
	command -v "$t" >/dev/null || { echo "wakeup.sh: $t not found" >&2; exit 1; }
done
WORK=$(mktemp -d)
pid=""
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
(cd "$here/.." && go build -o "$WORK/wakeecho" ./bench/cmd/wakeecho)
for i in $(seq 0 9999); do echo "h$i.bench.test A"; done >"$WORK/q"
hz=$(getconf CLK_TCK)
# mode:GOMAXPROCS
modes=(poll:1 poll-drain:1 block:1 block:2 rawblock:1)
for r in $(seq "$ROUNDS"); do
	for m in "${modes[@]}"; do
		mode=${m%%:*} procs=${m##*:}
		GOMAXPROCS=$procs taskset -c 1 "$WORK/wakeecho" -mode "$mode" -listen "127.0.0.1:$PORT" &
		pid=$!
		sleep 0.3
		taskset -c 0 dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/q" -c 8 -q 200 -t 2 -l 8 -Q "$RATE" >"$WORK/dnsperf" 2>&1 &
		dp=$!
		sleep 1.5
		t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
		sleep 5
		t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
		wait "$dp"
		kill "$pid"
		wait "$pid" 2>/dev/null || true
		pid=""
		qps=$(awk '/Queries per second/ {print $4}' "$WORK/dnsperf")
		awk -v r="$r" -v m="$mode" -v p="$procs" -v d=$((t1 - t0)) -v hz="$hz" -v q="$qps" \
			'BEGIN { printf "round %s  %-10s GOMAXPROCS=%s  %8.0f qps  %5.1f CPU us/query\n", r, m, p, q, d / hz * 1e6 / (q * 5) }'
	done
done
