#!/usr/bin/env bash
# bench/bundle-tools.sh DIR [TOOL...]: copy the tools (default: dnsperf and
# taskset), every shared library they load and the dynamic loader into DIR,
# with a wrapper DIR/TOOL for each that runs it through that loader. The
# bundle therefore runs on a bare Linux machine of the same architecture
# whatever its libc, e.g.
#   bench/bundle-tools.sh bin/benchtools
#   bench/scale.sh --tools bin/benchtools --tapproxy bin/tapproxy --responder bin/responder
# or, for bench/run.sh on such a machine (dnsdist and the dnstap collector too):
#   bench/bundle-tools.sh bin/benchtools dnsperf taskset dig getconf dnsdist fstrm_capture dnstap
#   PATH=$PWD/bin/benchtools:$PATH bench/run.sh ...
# (bin/ is git-ignored; about 10 MB for the default pair, 40 MB with all.)
set -eu -o pipefail
[ $# -ge 1 ] || { echo "usage: $0 DIR [TOOL...]" >&2; exit 2; }
DIR=$1
shift
TOOLS=("$@")
[ ${#TOOLS[@]} -gt 0 ] || TOOLS=(dnsperf taskset)
mkdir -p "$DIR/bin" "$DIR/lib"
DIR=$(cd "$DIR" && pwd)
loader=""
for tool in "${TOOLS[@]}"; do
	path=$(command -v "$tool") || { echo "$tool is not installed here" >&2; exit 1; }
	cp -L "$path" "$DIR/bin/$tool"
	# ldd lines: "libx.so => /path (addr)" or "/lib64/ld-linux-x86-64.so.2 (addr)".
	while read -r lib; do
		cp -L "$lib" "$DIR/lib/"
	done < <(ldd "$path" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
	l=$(ldd "$path" | awk '$1 ~ /^\// {print $1}')
	[ -n "$l" ] && loader=$(basename "$l")
done
[ -n "$loader" ] || { echo "no dynamic loader found in ldd output" >&2; exit 1; }
for tool in "${TOOLS[@]}"; do
	cat >"$DIR/$tool" <<EOF
#!/bin/sh
# Runs the bundled $tool with the bundled libraries (bench/bundle-tools.sh).
d=\$(dirname "\$0")
exec "\$d/lib/$loader" --library-path "\$d/lib" "\$d/bin/$tool" "\$@"
EOF
	chmod +x "$DIR/$tool"
done
for tool in "${TOOLS[@]}"; do
	case $tool in
	dnsperf) "$DIR/dnsperf" -h 2>&1 | grep -q '^Version' || { echo "bundled dnsperf does not run" >&2; exit 1; } ;;
	taskset) "$DIR/taskset" -c 0 true || { echo "bundled taskset does not run" >&2; exit 1; } ;;
	dnsdist) "$DIR/dnsdist" --version >/dev/null 2>&1 || { echo "bundled dnsdist does not run" >&2; exit 1; } ;;
	esac
done
du -sh "$DIR"
