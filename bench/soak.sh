#!/usr/bin/env bash
# bench/soak.sh: a long, bounded soak of tapproxy on loopback.
#
#   SOAK_TIME=10m bash bench/soak.sh        (make soak)
#
# Mixed load through one tapproxy in front of a local unbound (answers from
# local-data, never recurses): dnsperf over UDP and over TCP, plus 1 % of
# hostile datagrams (compression loops, runts, QR=1, random bodies) from a
# small sender. Meanwhile the dnstap collector (fstrm_capture) is killed and
# restarted every COLLECTOR_EVERY seconds and tapproxy gets a SIGHUP every
# HUP_EVERY seconds. Every SAMPLE_EVERY seconds it samples tapproxy's RSS
# (VmRSS), open fds and goroutines (go_goroutines from --metrics). At the
# end it checks that those stayed flat after WARMUP (last third of the
# samples against the first third)
# and that the final counters satisfy the README's accounting invariants.
# Exit status 0 when every check holds. Traffic goes to 127.0.0.1 only;
# every process started here is stopped by PID on exit.
set -euo pipefail

SOAK_TIME=${SOAK_TIME:-10m}
UDP_QPS=${UDP_QPS:-2000}
TCP_QPS=${TCP_QPS:-300}
COLLECTOR_EVERY=${COLLECTOR_EVERY:-30}
HUP_EVERY=${HUP_EVERY:-20}
SAMPLE_EVERY=${SAMPLE_EVERY:-10}
# tapproxy runs with GOGC=SOAK_GOGC: its preallocated queues make the
# default first GC target large (tens of MiB), so for minutes garbage would
# look like growth; a lower GOGC collects within the window, so a real leak
# shows as growth and garbage does not.
SOAK_GOGC=${SOAK_GOGC:-25}
# Samples taken in the first WARMUP seconds (pools and buffers filling up)
# are shown but left out of the flatness check.
WARMUP=${WARMUP:-30}
WORKERS=${WORKERS:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tapproxy-soak.XXXXXX")
PIDS=()

log() { printf '%s soak: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

secs() { # 10m, 90s, 2h, or plain seconds
	case $1 in
	*h) echo $((${1%h} * 3600)) ;; *m) echo $((${1%m} * 60)) ;; *s) echo "${1%s}" ;; *) echo "$1" ;;
	esac
}
DURATION=$(secs "$SOAK_TIME")

for t in dnsperf unbound fstrm_capture python3 curl go; do
	command -v "$t" >/dev/null || die "$t is required (make deps)"
done

freeport() { python3 -c 'import socket
s=socket.socket(); s.bind(("127.0.0.1",0)); u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
p=s.getsockname()[1]; u.bind(("127.0.0.1",p)); print(p)'; }

log "building tapproxy into $WORK"
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$WORK/tapproxy" ./cmd/tapproxy) || die "build failed"

# --- upstream: unbound with a local zone -----------------------------------
UP_PORT=$(freeport)
cat >"$WORK/unbound.conf" <<CONF
server:
    verbosity: 0
    interface: 127.0.0.1
    port: $UP_PORT
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    access-control: 127.0.0.0/8 allow
    username: ""
    chroot: ""
    directory: "$WORK"
    pidfile: "$WORK/unbound.pid"
    logfile: ""
    use-syslog: no
    do-daemonize: no
    num-threads: 1
    module-config: "iterator"
    do-not-query-localhost: yes
    incoming-num-tcp: 100
    ip-ratelimit: 0
    ratelimit: 0
    local-zone: "test." nodefault
    local-zone: "." refuse
    local-zone: "soak.test." static
    local-data: "soak.test. 300 IN SOA ns.soak.test. h.soak.test. 1 3600 600 86400 300"
    local-data: "www.soak.test. 300 IN A 192.0.2.1"
    local-data: "www.soak.test. 300 IN AAAA 2001:db8::1"
    local-data: "txt.soak.test. 300 IN TXT \"soak\""
CONF
unbound -d -c "$WORK/unbound.conf" >"$WORK/unbound.log" 2>&1 &
PIDS+=($!)

# --- dnstap collector, restarted in a loop ----------------------------------
SOCK=$WORK/dnstap.sock
CAP_N=0
start_collector() {
	CAP_N=$((CAP_N + 1))
	fstrm_capture -t protobuf:dnstap.Dnstap -u "$SOCK" -w "$WORK/cap.$CAP_N.fstrm" >>"$WORK/fstrm.log" 2>&1 &
	CAP_PID=$!
	PIDS+=("$CAP_PID")
}
start_collector

# --- tapproxy ----------------------------------------------------------------
LISTEN_PORT=$(freeport)
METRICS=127.0.0.1:$(freeport)
GOGC=$SOAK_GOGC "$WORK/tapproxy" --listen "127.0.0.1:$LISTEN_PORT" --upstream "127.0.0.1:$UP_PORT" --workers "$WORKERS" \
	--timeout 2s --dnstap-unix "$SOCK" --metrics "$METRICS" >"$WORK/tapproxy.log" 2>&1 &
TP=$!
PIDS+=("$TP")
for _ in $(seq 100); do
	grep -q 'msg=ready' "$WORK/tapproxy.log" 2>/dev/null && break
	kill -0 "$TP" 2>/dev/null || die "tapproxy exited: $(cat "$WORK/tapproxy.log")"
	sleep 0.1
done
grep -q 'msg=ready' "$WORK/tapproxy.log" || die "tapproxy not ready: $(cat "$WORK/tapproxy.log")"
dig_ok=$(python3 - "$LISTEN_PORT" <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x03www\x04soak\x04test\x00\x00\x01\x00\x01"
s.sendto(q, ("127.0.0.1", int(sys.argv[1])))
print("ok" if s.recv(4096)[:2] == b"\x12\x34" else "bad")
PY
) || true
[ "$dig_ok" = ok ] || die "no answer through tapproxy: $(tail -5 "$WORK/tapproxy.log")"
log "tapproxy pid $TP on 127.0.0.1:$LISTEN_PORT, unbound on $UP_PORT, metrics $METRICS, for ${DURATION}s"

# --- load ---------------------------------------------------------------------
{
	for _ in $(seq 40); do echo "www.soak.test A"; done
	for _ in $(seq 30); do echo "www.soak.test AAAA"; done
	for _ in $(seq 10); do echo "txt.soak.test TXT"; done
	for i in $(seq 20); do echo "nx$i.soak.test A"; done
} >"$WORK/queries"
dnsperf -s 127.0.0.1 -p "$LISTEN_PORT" -d "$WORK/queries" -l "$DURATION" -Q "$UDP_QPS" -c 8 -t 3 \
	>"$WORK/dnsperf-udp.log" 2>&1 &
UDP_LOAD=$!
PIDS+=("$UDP_LOAD")
dnsperf -m tcp -s 127.0.0.1 -p "$LISTEN_PORT" -d "$WORK/queries" -l "$DURATION" -Q "$TCP_QPS" -c 4 -t 3 \
	>"$WORK/dnsperf-tcp.log" 2>&1 &
TCP_LOAD=$!
PIDS+=("$TCP_LOAD")
# 1 % hostile datagrams, paced, seeded: the same run sends the same bytes.
python3 - "$LISTEN_PORT" "$DURATION" "$(((UDP_QPS + TCP_QPS) / 100))" >"$WORK/hostile.log" 2>&1 <<'PY' &
import random, socket, struct, sys, time
port, dur, rate = int(sys.argv[1]), float(sys.argv[2]), max(1, int(sys.argv[3]))
r = random.Random(20261127)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def hdr(flags, qd=1, an=0, ns=0, ar=0):
    return struct.pack(">HHHHHH", r.randrange(65536), flags, qd, an, ns, ar)
kinds = [
    lambda: hdr(0x0100) + b"\xc0\x0c\x00\x01\x00\x01",                    # pointer loop
    lambda: hdr(0x0100) + b"\x80x\x00\x00\x01\x00\x01",                   # reserved label type
    lambda: hdr(0x0100, 65535) + b"\x03www\x04soak\x04test\x00\x00\x01\x00\x01",
    lambda: bytes(r.randrange(256) for _ in range(r.randrange(12))),      # runt
    lambda: hdr(0x8180) + b"\x03www\x04soak\x04test\x00\x00\x01\x00\x01", # QR=1
    lambda: hdr(r.randrange(0x8000)) + bytes(r.randrange(256) for _ in range(r.randrange(300))),
]
end, sent = time.monotonic() + dur, 0
while time.monotonic() < end:
    s.sendto(r.choice(kinds)(), ("127.0.0.1", port))
    sent += 1
    time.sleep(1.0 / rate)
print("hostile sent", sent)
PY
HOSTILE=$!
PIDS+=("$HOSTILE")

# --- sampling, collector restarts, SIGHUPs -----------------------------------
sample() {
	local rss fds gor heap objs m
	rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$TP/status")
	fds=$(find "/proc/$TP/fd" -mindepth 1 -maxdepth 1 | wc -l)
	m=$(curl -fsS "http://$METRICS/metrics")
	gor=$(echo "$m" | awk '$1 == "go_goroutines" {print $2}')
	heap=$(echo "$m" | awk '$1 == "go_memstats_heap_inuse_bytes" {printf "%d", $2 / 1024}')
	objs=$(echo "$m" | awk '$1 == "go_memstats_heap_objects" {printf "%d", $2}')
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$rss" "$fds" "$gor" "$heap" "$objs" >>"$WORK/samples.tsv"
	log "t=${1}s rss=${rss}KiB fds=$fds goroutines=$gor heap_inuse=${heap}KiB heap_objects=$objs"
}
printf 't\trss_kib\tfds\tgoroutines\theap_inuse_kib\theap_objects\n' >"$WORK/samples.tsv"
start=$(date +%s)
last_cap=$start last_hup=$start last_sample=0
restarts=0 hups=0
while :; do
	now=$(date +%s)
	el=$((now - start))
	[ "$el" -ge "$DURATION" ] && break
	kill -0 "$TP" 2>/dev/null || die "tapproxy died: $(tail -20 "$WORK/tapproxy.log")"
	if [ $((now - last_cap)) -ge "$COLLECTOR_EVERY" ]; then
		kill "$CAP_PID" 2>/dev/null || true
		wait "$CAP_PID" 2>/dev/null || true
		start_collector
		restarts=$((restarts + 1))
		last_cap=$now
	fi
	if [ $((now - last_hup)) -ge "$HUP_EVERY" ]; then
		kill -HUP "$TP"
		hups=$((hups + 1))
		last_hup=$now
	fi
	if [ "$el" -ge "$last_sample" ]; then
		sample "$el"
		last_sample=$((el + SAMPLE_EVERY))
	fi
	sleep 1
done
wait "$UDP_LOAD" "$TCP_LOAD" "$HOSTILE" 2>/dev/null || true
sleep 3 # let the last answers and timeouts settle before the final sample
sample "$(($(date +%s) - start))"

# --- flatness ----------------------------------------------------------------
fail=0
read -r rss0 rss1 fds0 fds1 g0 g1 < <(awk -F'\t' -v warm="$WARMUP" 'NR > 1 && $1 >= warm {n++; t[n] = $2; f[n] = $3; g[n] = $4}
	END {
		k = int(n / 3); if (k < 1) k = 1
		for (i = 1; i <= k; i++) { r0 += t[i]; f0 = (f[i] > f0 ? f[i] : f0); g0 = (g[i] > g0 ? g[i] : g0) }
		for (i = n - k + 1; i <= n; i++) { r1 += t[i]; f1 = (f[i] > f1 ? f[i] : f1); g1 = (g[i] > g1 ? g[i] : g1) }
		printf "%d %d %d %d %d %d\n", r0 / k, r1 / k, f0, f1, g0, g1
	}' "$WORK/samples.tsv")
log "RSS first third ${rss0} KiB, last third ${rss1} KiB; fds max $fds0 -> $fds1; goroutines max $g0 -> $g1"
if [ "$rss1" -gt $((rss0 + rss0 / 5 + 8192)) ]; then log "FAIL: RSS grew"; fail=1; fi
if [ "$fds1" -gt $((fds0 + 8)) ]; then log "FAIL: fds grew"; fail=1; fi
if [ "$g1" -gt $((g0 + 16)) ]; then log "FAIL: goroutines grew"; fail=1; fi
# The lowest heap_inuse of a stretch approximates the live heap after a GC:
# it must not climb (garbage comes and goes; a leak stays).
read -r h0 h1 < <(awk -F'\t' -v warm="$WARMUP" 'NR > 1 && $1 >= warm {n++; h[n] = $5}
	END {
		k = int(n / 3); if (k < 1) k = 1
		m0 = h[1]; for (i = 1; i <= k; i++) if (h[i] < m0) m0 = h[i]
		m1 = h[n]; for (i = n - k + 1; i <= n; i++) if (h[i] < m1) m1 = h[i]
		printf "%d %d\n", m0, m1
	}' "$WORK/samples.tsv")
log "heap_inuse trough first third ${h0} KiB, last third ${h1} KiB"
if [ "$h1" -gt $((h0 + h0 / 10 + 4096)) ]; then log "FAIL: live heap grew"; fail=1; fi

# --- stop, final counters, invariants ----------------------------------------
kill -TERM "$TP"
wait "$TP" || die "tapproxy exited with status $?"
line=$(grep 'msg="final counters"' "$WORK/tapproxy.log" | tail -1)
[ -n "$line" ] || die "no final counters line"
echo "$line" | tr ' ' '\n' | grep -E '^[a-z_]+=[0-9]+$' >"$WORK/counters"
c() { awk -F= -v k="$1" '$1 == k {v = $2} END {print v + 0}' "$WORK/counters"; }
check() { # NAME LHS RHS...
	local name=$1 lhs=$2 sum=0 k
	shift 2
	for k in "$@"; do sum=$((sum + $(c "$k"))); done
	if [ "$(c "$lhs")" -ne "$sum" ]; then
		log "FAIL: $name: $lhs=$(c "$lhs") != $sum ($*)"
		fail=1
	else
		log "ok: $name: $lhs=$(c "$lhs")"
	fi
}
check client received dropped_short dropped_qr refused_acl dropped_acl dropped_inflight_full \
	send_failed servfail_all_down loop_detected dropped_panic forwarded
check forwarded forwarded answered timed_out reply_failed
check responses resp_received resp_matched resp_short resp_not_response resp_wrong_source \
	resp_unknown_id resp_late resp_question_mismatch resp_panic
check tcp tcp_handled tcp_dropped_inflight_full tcp_send_failed tcp_servfail_all_down tcp_dropped_panic tcp_forwarded tcp_unsent
check dnstap dnstap_produced dnstap_written dnstap_dropped_queue_full dnstap_dropped_too_large \
	dnstap_dropped_write_error dnstap_dropped_shutdown dnstap_dropped_panic
[ "$(c panics)" -eq 0 ] || { log "FAIL: panics=$(c panics)"; fail=1; }

udp_done=$(awk '/Queries completed:/ {print $3}' "$WORK/dnsperf-udp.log")
tcp_done=$(awk '/Queries completed:/ {print $3}' "$WORK/dnsperf-tcp.log")
udp_lost=$(awk '/Queries lost:/ {print $3}' "$WORK/dnsperf-udp.log")
tcp_lost=$(awk '/Queries lost:/ {print $3}' "$WORK/dnsperf-tcp.log")
log "summary: ${DURATION}s; dnsperf UDP completed $udp_done lost $udp_lost, TCP completed $tcp_done lost $tcp_lost;" \
	"$(cat "$WORK/hostile.log"); collector restarts $restarts; SIGHUPs $hups;" \
	"received=$(c received) forwarded=$(c forwarded) answered=$(c answered) timed_out=$(c timed_out)" \
	"dropped_short=$(c dropped_short) dropped_qr=$(c dropped_qr) malformed=$(c malformed)" \
	"tcp_answered=$(c tcp_answered) dnstap_written=$(c dnstap_written)" \
	"dnstap_dropped_write_error=$(c dnstap_dropped_write_error) dnstap_dropped_queue_full=$(c dnstap_dropped_queue_full)" \
	"dnstap_lost_after_write=$(c dnstap_lost_after_write) kernel_drops=$(c kernel_drops)"
[ "$fail" = 0 ] || die "see $WORK (KEEP=1 keeps it)"
log "PASS"
