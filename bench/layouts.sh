#!/usr/bin/env bash
# bench/layouts.sh DIR OUTDIR [ROUNDS] [DURATION]: bench/run.sh twice on one
# many-core machine, in two CPU layouts, so the figures can be compared side
# by side on the same hardware:
#   shared: the proxy alone on CPU 1; dnsperf, responder and collector share
#           CPU 0 (the 2-CPU layout of bench/RESULTS.md);
#   spread: the proxy alone on CPU 1; dnsperf, responder and collector on
#           CPUs 2-9, so the load side is never the bottleneck and "max qps
#           vs direct" measures the proxy.
# DIR holds tapproxy, responder and dnsq (built with CGO_ENABLED=0) and
# benchtools/, a bundle made by
#   bench/bundle-tools.sh DIR/benchtools dnsperf taskset getconf dnsdist fstrm_capture dnstap
# (dig is replaced by a shim over dnsq: its ICU data alone is 30 MB).
set -eu -o pipefail
[ $# -ge 2 ] || { echo "usage: $0 DIR OUTDIR [ROUNDS] [DURATION]" >&2; exit 2; }
DIR=$(cd "$1" && pwd)
OUTDIR=$2
ROUNDS=${3:-1}
DURATION=${4:-6}
mkdir -p "$OUTDIR"
SHIM=$(mktemp -d)
trap 'rm -rf "$SHIM"' EXIT
# dig +short ... @SERVER -p PORT NAME [TYPE], as bench/run.sh's probe uses it.
cat >"$SHIM/dig" <<SH
#!/bin/sh
srv=127.0.0.1 port=53 name= typ=A
while [ \$# -gt 0 ]; do
	case \$1 in
	-p) port=\$2; shift ;;
	@*) srv=\${1#@} ;;
	+*) ;;
	*) if [ -z "\$name" ]; then name=\$1; else typ=\$1; fi ;;
	esac
	shift
done
"$DIR/dnsq" "\$srv:\$port" "\$name" "\$typ" 2>/dev/null | awk '\$4 == "A" || \$4 == "AAAA" {print \$5}'
SH
chmod +x "$SHIM/dig"
export PATH="$SHIM:$DIR/benchtools:$PATH"
here=$(cd "$(dirname "$0")" && pwd)
for layout in shared spread; do
	case $layout in
	shared) load=0 ;;
	spread) load=2-9 ;;
	esac
	echo "== layout $layout: proxy on CPU 1, load on CPU(s) $load" >&2
	PROXY_CPU=1 LOAD_CPU=$load "$here/run.sh" --rounds "$ROUNDS" --duration "$DURATION" \
		--tapproxy "$DIR/tapproxy" --responder "$DIR/responder" --out "$OUTDIR/$layout.md"
done
