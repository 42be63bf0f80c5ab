#!/usr/bin/env bash
# Assembles an OpenWrt .ipk for tapproxy without the SDK: a static
# cross-build plus the files in files/, laid out the way OpenWrt's
# scripts/ipkg-build does (a gzipped tar of debian-binary, control.tar.gz
# and data.tar.gz), installable with `opkg install tapproxy_*.ipk`.
#
# Usage: packaging/openwrt/build-ipk.sh OPKG_ARCH [OUTDIR]   (default: dist/)
#   OPKG_ARCH is the router's package architecture, as printed by
#   `opkg print-architecture`, e.g. mipsel_24kc, mips_24kc,
#   arm_cortex-a7_neon-vfpv4, aarch64_cortex-a53, x86_64.
# Environment: VERSION (default 0.0.0-git.HASH), TAPPROXY_BIN (package this
# binary instead of building one).
#
# OpenWrt 25.x moves from opkg/.ipk to apk; use the SDK Makefile there.
# Prints the path of the .ipk on the last line of stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
die() { echo "openwrt/build-ipk.sh: $*" >&2; exit 1; }

[[ $# -ge 1 ]] || die "usage: $0 OPKG_ARCH [OUTDIR]"
arch=$1
out=${2:-$repo/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# GOARCH (and GOARM/GOMIPS) from the package architecture. OpenWrt's MIPS
# targets have no FPU: soft float. ARM: v7 for Cortex-A, v6 for ARM11,
# else v5.
case $arch in
mipsel_*) goarch=mipsle; export GOMIPS=softfloat ;;
mips_*) goarch=mips; export GOMIPS=softfloat ;;
aarch64_*) goarch=arm64 ;;
arm_cortex-a*) goarch=arm; export GOARM=7 ;;
arm_arm1176*) goarch=arm; export GOARM=6 ;;
arm_*) goarch=arm; export GOARM=5 ;;
x86_64) goarch=amd64 ;;
i386_*) goarch=386; export GO386=softfloat ;;
*) die "unknown OpenWrt architecture $arch" ;;
esac

if [[ -z ${VERSION:-} ]]; then
	VERSION="0.0.0-git.$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
fi
if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
	SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
data=$stage/data
ctrl=$stage/control

install -d "$data/usr/bin"
if [[ -n ${TAPPROXY_BIN:-} ]]; then
	install -m 0755 "$TAPPROXY_BIN" "$data/usr/bin/tapproxy"
else
	(cd "$repo" && CGO_ENABLED=0 GOOS=linux GOARCH=$goarch go build -tags tapproxy_small -trimpath \
		-ldflags "-s -w -X main.version=$VERSION" -o "$data/usr/bin/tapproxy" ./cmd/tapproxy)
fi
install -D -m 0755 "$here/files/tapproxy.init" "$data/etc/init.d/tapproxy"
install -D -m 0600 "$here/files/tapproxy.config" "$data/etc/config/tapproxy"
install -D -m 0644 "$here/files/tapproxy.json" "$data/etc/capabilities/tapproxy.json"

install -d "$ctrl"
size=$(du -sb "$data" | cut -f1)
cat >"$ctrl/control" <<EOF
Package: tapproxy
Version: $VERSION
Depends: libc
Source: packaging/openwrt
Section: net
Architecture: $arch
Installed-Size: $size
Require-User: tapproxy=5353:tapproxy=5353
Description: Transparent logging DNS proxy (dnstap). Runs on port 53 in
 front of dnsmasq moved to 127.0.0.1:5353; see /etc/config/tapproxy.
EOF
echo /etc/config/tapproxy >"$ctrl/conffiles"
# OpenWrt's standard maintainer scripts: default_postinst creates the
# Require-User account, enables the init script and starts it (start_service
# does nothing until tapproxy.main.enabled=1); default_prerm stops and
# disables it.
cat >"$ctrl/postinst" <<'EOF'
#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_postinst $0 $@
EOF
cat >"$ctrl/prerm" <<'EOF'
#!/bin/sh
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_prerm $0 $@
EOF
chmod 0755 "$ctrl/postinst" "$ctrl/prerm"
echo "2.0" >"$stage/debian-binary"

tarball() { # DIR OUTPUT: a reproducible, root-owned tar.gz of DIR's contents
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
		-C "$1" -cf - . | gzip -n9 >"$2"
}
tarball "$data" "$stage/data.tar.gz"
tarball "$ctrl" "$stage/control.tar.gz"
ipk="$out/tapproxy_${VERSION}_${arch}.ipk"
tar --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" -C "$stage" \
	-cf - ./debian-binary ./data.tar.gz ./control.tar.gz | gzip -n9 >"$ipk"
echo "$ipk"
