#!/usr/bin/env bash
# The README's first command (make demo): build tapproxy and the reference
# responder, run tapproxy in front of the responder on loopback with dnstap
# to a file, send a few queries, show the answers and the dnstap log, stop.
# Needs only Go. Everything stays on 127.0.0.1; both processes are stopped
# by PID when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d /tmp/tapproxy-demo.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

go build -o "$out/tapproxy" ./cmd/tapproxy
go build -o "$out/responder" ./bench/cmd/responder
go build -o "$out/dnsq" ./bench/cmd/dnsq

wait_line() { # file pattern
	for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
	echo "demo: timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

"$out/responder" --listen 127.0.0.1:0 --ready-file "$out/responder.addr" 2>"$out/responder.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$out/responder.addr" ] && break; sleep 0.05; done
up=$(cat "$out/responder.addr")

"$out/tapproxy" --listen 127.0.0.1:0 --upstream "$up" --workers 2 \
	--dnstap-file "$out/dns.fstrm" --dnstap-types all 2>"$out/tapproxy.log" &
tp=$!
pids+=($tp)
wait_line "$out/tapproxy.log" 'msg=ready'
listen=$(sed -n 's/.*msg=ready listen=\[\([^] ]*\).*/\1/p' "$out/tapproxy.log")

echo "== tapproxy listening on $listen, forwarding to the test responder on $up"
echo "== answers through tapproxy:"
"$out/dnsq" "$listen" www.bench.test A www.bench.test AAAA hello.bench.test TXT gone.nx.bench.test A

kill -TERM "$tp"
wait "$tp" || true
echo
echo "== tapproxy's final counters:"
grep 'final counters' "$out/tapproxy.log" | tr ' ' '\n' | grep -E '^(received|forwarded|answered|timed_out|dnstap_written|dnstap_produced)='
echo
echo "== the dnstap log, as tapproxy read prints it (query/response pairs with their latency):"
"$out/tapproxy" read --pairs "$out/dns.fstrm" || true
echo
echo "== one record in full:"
"$out/tapproxy" read "$out/dns.fstrm" | sed -n '1,40p' || true
echo
echo "(files kept in $out)"
