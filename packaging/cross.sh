#!/usr/bin/env bash
# Cross-builds tapproxy for the router and server targets (static:
# CGO_ENABLED=0, -trimpath, -ldflags "-s -w") and prints a table of the
# stripped binary sizes against the 8 MB budget.
#
# Usage: packaging/cross.sh [OUTDIR]     (default: dist/cross)
# Environment: MAX_BYTES: fail if a binary is larger (default: report only;
# the budget, 8000000 bytes, is marked in the table either way).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/dist/cross}
mkdir -p "$out"
budget=8000000
version=$(git -C "$repo" describe --tags --always --dirty 2>/dev/null || echo dev)

# name GOARCH GOARM GOMIPS TAGS. Router targets use the small build
# (-tags tapproxy_small: no Prometheus endpoint, no report command; see
# cmd/tapproxy/small.go); the server build has everything.
targets=(
	"linux-amd64  amd64  -  -         -"
	"linux-arm64  arm64  -  -         tapproxy_small"
	"linux-armv7  arm    7  -         tapproxy_small"
	"linux-mips   mips   -  softfloat tapproxy_small"
	"linux-mipsle mipsle -  softfloat tapproxy_small"
)

failed=0
over=0
rows=()
for t in "${targets[@]}"; do
	read -r name goarch goarm gomips tags <<<"$t"
	bin="$out/tapproxy-$name"
	env=(CGO_ENABLED=0 GOOS=linux GOARCH="$goarch")
	[[ $goarm != - ]] && env+=(GOARM="$goarm")
	[[ $gomips != - ]] && env+=(GOMIPS="$gomips")
	[[ $tags == - ]] && tags=""
	if ! (cd "$repo" && env "${env[@]}" go build -tags "$tags" -trimpath -ldflags "-s -w -X main.version=$version" \
		-o "$bin" ./cmd/tapproxy); then
		rows+=("$(printf '%-14s %-40s %12s %8s  %s' "$name" "${env[*]:1}" - - "BUILD FAILED")")
		failed=1
		continue
	fi
	bytes=$(stat -c %s "$bin")
	verdict=ok
	if ((bytes > budget)); then
		verdict="over 8 MB"
		over=1
	fi
	if [[ -n ${MAX_BYTES:-} ]] && ((bytes > MAX_BYTES)); then
		verdict="over MAX_BYTES=$MAX_BYTES"
		failed=1
	fi
	mib=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')
	rows+=("$(printf '%-14s %-40s %12d %8s  %s' "$name" "${env[*]:1}${tags:+ -tags $tags}" "$bytes" "$mib" "$verdict")")
done

printf '%-14s %-40s %12s %8s  %s\n' target environment bytes MiB "budget 8 MB"
printf '%s\n' "${rows[@]}"
echo "binaries in $out"
((over)) && echo "cross.sh: some binaries exceed the 8 MB budget" >&2
exit $failed
