#!/usr/bin/env bash
# Builds tapproxy_VERSION_ARCH.deb with plain dpkg-deb (no debhelper).
#
# Usage: packaging/deb/build.sh [OUTDIR]          (default OUTDIR: dist/)
# Environment:
#   GOARCH        target architecture (default: the host's); arm builds
#                 GOARM=7 (armhf), mipsle builds GOMIPS=softfloat (mipsel)
#   VERSION       package version (default: from git, see below)
#   TAPPROXY_BIN  package this prebuilt binary instead of building one
#
# Prints the path of the .deb on the last line of stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
pkgdir=$(cd "$here/.." && pwd)
repo=$(cd "$pkgdir/.." && pwd)
out=${1:-$repo/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

die() { echo "deb/build.sh: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (Debian package: dpkg)"

goarch=${GOARCH:-$(go env GOARCH)}
case $goarch in
amd64) debarch=amd64 ;;
arm64) debarch=arm64 ;;
arm) debarch=armhf; export GOARM=${GOARM:-7} ;;
386) debarch=i386 ;;
mipsle) debarch=mipsel; export GOMIPS=${GOMIPS:-softfloat} ;;
mips64le) debarch=mips64el ;;
ppc64le) debarch=ppc64el ;;
riscv64) debarch=riscv64 ;;
s390x) debarch=s390x ;;
*) die "no Debian architecture for GOARCH=$goarch" ;;
esac

# Version: $VERSION, else the nearest vX.Y.Z tag (v1.2.3-4-gabcdef becomes
# 1.2.3+git4.gabcdef), else 0.0.0~gitDATE.HASH from the last commit, so
# later commits sort higher. "~" sorts before anything in Debian versions.
if [[ -z ${VERSION:-} ]]; then
	if d=$(git -C "$repo" describe --tags --match 'v[0-9]*' 2>/dev/null); then
		VERSION=$(sed -E 's/^v//; s/-([0-9]+)-g([0-9a-f]+)$/+git\1.g\2/' <<<"$d")
	elif h=$(git -C "$repo" log -1 --format='%cd.%h' --date=format:%Y%m%d%H%M%S 2>/dev/null); then
		VERSION="0.0.0~git$h"
	else
		VERSION="0.0.0~unknown"
	fi
fi
[[ $VERSION =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "VERSION $VERSION is not a Debian version"
# Reproducible archives: dpkg-deb clamps file times to SOURCE_DATE_EPOCH.
if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
	SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)
	export SOURCE_DATE_EPOCH
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root

install -d "$root/usr/bin"
if [[ -n ${TAPPROXY_BIN:-} ]]; then
	install -m 0755 "$TAPPROXY_BIN" "$root/usr/bin/tapproxy"
else
	(cd "$repo" && CGO_ENABLED=0 GOOS=linux GOARCH=$goarch go build -trimpath \
		-ldflags "-s -w -X main.version=$VERSION" -o "$root/usr/bin/tapproxy" ./cmd/tapproxy)
fi
install -D -m 0644 "$pkgdir/systemd/tapproxy.service" "$root/lib/systemd/system/tapproxy.service"
install -D -m 0644 "$pkgdir/systemd/tapproxy.sysusers" "$root/usr/lib/sysusers.d/tapproxy.conf"
install -D -m 0644 "$pkgdir/systemd/tapproxy.tmpfiles" "$root/usr/lib/tmpfiles.d/tapproxy.conf"
install -D -m 0644 "$here/tapproxy.yaml" "$root/etc/tapproxy/tapproxy.yaml"
install -D -m 0644 "$pkgdir/README.md" "$root/usr/share/doc/tapproxy/README.md"
install -D -m 0644 "$pkgdir/systemd/90-tapproxy-sysctl.conf" "$root/usr/share/doc/tapproxy/examples/90-tapproxy-sysctl.conf"

install -d "$root/DEBIAN"
for s in postinst prerm postrm; do
	install -m 0755 "$here/$s" "$root/DEBIAN/$s"
done
echo /etc/tapproxy/tapproxy.yaml >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: tapproxy
Version: $VERSION
Architecture: $debarch
Maintainer: tapproxy developers <tapproxy@localhost>
Installed-Size: $size
Section: net
Priority: optional
Recommends: systemd
Suggests: unbound | bind9
Description: transparent logging DNS proxy
 tapproxy forwards DNS over UDP and TCP byte for byte to a resolver, stamps
 each packet with the kernel receive time, pairs queries with answers and
 logs both verbatim to dnstap (Frame Streams), never blocking DNS on
 logging. This package runs it on port 53 in front of a local resolver
 moved to 127.0.0.1:5353 and writes /var/log/tapproxy/dns.fstrm.
EOF

deb="$out/tapproxy_${VERSION}_${debarch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
