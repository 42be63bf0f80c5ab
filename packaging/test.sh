#!/usr/bin/env bash
# The checks are functions run through check(): not unreachable.
# shellcheck disable=SC2317
#
# packaging/test.sh: checks everything under packaging/ without touching
# this machine's users, units or /var/log.
#
#   - shellcheck on every script; systemd-analyze verify on the unit
#   - the .deb: build, dpkg-deb -I/-c, install into a scratch root with
#     dpkg --root=DIR --force-script-chrootless (the maintainer scripts run
#     on this host with DPKG_ROOT=DIR and point every path and tool there:
#     systemd-sysusers --root, systemctl --root), conffile kept on
#     reinstall, remove, purge
#   - the binary from the .deb: every key of the default config and every
#     UCI option of the OpenWrt init script is a `tapproxy serve` flag;
#     `tapproxy tune` exit codes on the fixture trees
#   - OpenWrt: the init script's command line (run against stubbed
#     rc.common/procd functions), the .ipk layout
#   - cross.sh: every target builds; sizes reported
#   - Dockerfile: the paths it copies exist (Docker itself cannot run here)
#
# Needs: go, dpkg, dpkg-deb, systemd-analyze and systemd-sysusers (Debian
# package systemd), shellcheck, tar, gzip, awk. A missing tool fails.
# Ends with "N passed, N failed"; exit status 1 if any check failed.
set -uo pipefail

pkg=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$pkg/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() {
	echo "FAIL $1"
	[[ -s $work/log ]] && sed 's/^/     /' "$work/log" | tail -40
	failed=$((failed + 1))
}
# check NAME CMD...: runs CMD, output to a log shown on failure.
check() {
	local name=$1
	shift
	if "$@" >"$work/log" 2>&1; then ok "$name"; else bad "$name"; fi
}
finish() {
	echo
	echo "$passed passed, $failed failed"
	((failed == 0))
	exit
}

# ---- tools -------------------------------------------------------------
declare -A tool_pkg=([go]=golang [dpkg]=dpkg [dpkg-deb]=dpkg [systemd-analyze]=systemd
	[systemd-sysusers]=systemd [systemctl]=systemd [shellcheck]=shellcheck [tar]=tar
	[gzip]=gzip [awk]=mawk)
for t in "${!tool_pkg[@]}"; do
	if ! command -v "$t" >/dev/null; then
		: >"$work/log"
		bad "tool $t missing (Debian package ${tool_pkg[$t]})"
	fi
done
((failed)) && finish

# ---- static checks -----------------------------------------------------
check "shellcheck bash scripts" shellcheck -x "$pkg/cross.sh" "$pkg/deb/build.sh" "$pkg/openwrt/build-ipk.sh" "$pkg/test.sh"
check "shellcheck maintainer scripts" shellcheck -s sh "$pkg/deb/postinst" "$pkg/deb/prerm" "$pkg/deb/postrm"
# rc.common supplies USE_PROCD, START, STOP and the procd_* functions.
# busybox ash has "local"; dash is the nearest dialect shellcheck knows.
check "shellcheck OpenWrt init" shellcheck -s dash -e SC2034,SC2154 "$pkg/openwrt/files/tapproxy.init"
check "capabilities JSON" python3 -m json.tool "$pkg/openwrt/files/tapproxy.json"

dockerfile_paths() {
	local f=$pkg/Dockerfile
	[[ -f $repo/go.mod && -f $repo/go.sum && -d $repo/cmd/tapproxy ]] || return 1
	grep -q 'COPY go.mod go.sum ./' "$f" && grep -q '\./cmd/tapproxy' "$f" &&
		grep -q '^USER tapproxy' "$f" && grep -q '^EXPOSE 53/udp 53/tcp' "$f" &&
		grep -q 'CGO_ENABLED=0' "$f"
}
check "Dockerfile paths and user (not built: no Docker daemon here)" dockerfile_paths

# ---- .deb --------------------------------------------------------------
deb=""
build_deb() {
	deb=$("$pkg/deb/build.sh" "$work/dist" | tail -1)
	[[ -f $deb ]]
}
if ! build_deb >"$work/log" 2>&1; then
	bad "deb build"
	finish
fi
ok "deb build ($(basename "$deb"))"

deb_info() {
	local info
	info=$(dpkg-deb -I "$deb") || return 1
	echo "$info"
	for field in "Package: tapproxy" "Architecture: $(dpkg --print-architecture)" "Section: net"; do
		grep -q "^ $field\$" <<<"$info" || { echo "missing: $field"; return 1; }
	done
	[[ $(dpkg-deb -f "$deb" Version) =~ ^[0-9] ]] || return 1
	[[ $(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles) == /etc/tapproxy/tapproxy.yaml ]]
}
check "dpkg-deb -I: control fields, conffiles" deb_info

deb_contents() {
	local c
	c=$(dpkg-deb -c "$deb") || return 1
	echo "$c"
	local want=(
		"-rwxr-xr-x root/root .* ./usr/bin/tapproxy"
		"-rw-r--r-- root/root .* ./lib/systemd/system/tapproxy.service"
		"-rw-r--r-- root/root .* ./etc/tapproxy/tapproxy.yaml"
		"-rw-r--r-- root/root .* ./usr/lib/sysusers.d/tapproxy.conf"
		"-rw-r--r-- root/root .* ./usr/lib/tmpfiles.d/tapproxy.conf"
	)
	for w in "${want[@]}"; do
		grep -Eq -- "^$w\$" <<<"$c" || { echo "missing: $w"; return 1; }
	done
	# Static binary: no interpreter, so it runs on any Debian release.
	dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./usr/bin/tapproxy >"$work/tapproxy.bin" &&
		! grep -q 'ld-linux' "$work/tapproxy.bin"
}
check "dpkg-deb -c: files, modes, owners, static binary" deb_contents

root=$work/root
passwd_before=$(md5sum /etc/passwd /etc/group)
dpkg_root() {
	dpkg --root="$root" --force-not-root --force-script-chrootless --log=/dev/null "$@"
}
scratch_install() {
	mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
	: >"$root/var/lib/dpkg/status"
	: >"$root/var/lib/dpkg/available"
	dpkg_root -i "$deb" || return 1
	grep '^tapproxy:' "$root/etc/passwd" || { echo "no tapproxy user in the scratch root"; return 1; }
	local uid
	uid=$(awk -F: '$1 == "tapproxy" { print $3 }' "$root/etc/passwd")
	[[ $(stat -c '%u %a' "$root/var/log/tapproxy") == "$uid 750" ]] || { echo "bad /var/log/tapproxy"; return 1; }
	[[ -L $root/etc/systemd/system/multi-user.target.wants/tapproxy.service ]] || { echo "not enabled"; return 1; }
	[[ $(md5sum /etc/passwd /etc/group) == "$passwd_before" ]] || { echo "host users changed"; return 1; }
	# Kept for the flag checks below, after the package is purged.
	cp "$root/usr/bin/tapproxy" "$work/tapproxy"
}
check "install into a scratch root (user, /var/log/tapproxy, enabled; host untouched)" scratch_install

verify_unit() {
	# systemd-analyze verify checks that ExecStart/ExecReload binaries exist,
	# so it runs against a copy of the scratch root plus this host's units.
	local v=$work/verify
	cp -a "$root" "$v" && mkdir -p "$v/bin" "$v/lib/systemd/system" &&
		cp /bin/kill "$v/bin/kill" &&
		cp -an /usr/lib/systemd/system/. "$v/lib/systemd/system/" &&
		SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --root="$v" "$v/lib/systemd/system/tapproxy.service" || return 1
	# The exposure score is informational; print it.
	systemd-analyze security --offline=yes --root="$v" tapproxy.service | tail -1
}
check "systemd-analyze verify tapproxy.service" verify_unit

bin=$work/tapproxy
serve_flags() {
	"$bin" serve -h 2>&1 | sed -nE 's/^  -([a-z0-9-]+).*/\1/p' | sort -u
}
config_keys_are_flags() {
	local flags keys missing=0
	flags=$(serve_flags)
	[[ -n $flags ]] || { echo "tapproxy serve -h listed no flags"; return 1; }
	keys=$(sed -nE 's/^([a-z0-9-]+):.*/\1/p' "$pkg/deb/tapproxy.yaml")
	for k in $keys; do
		grep -qx -- "$k" <<<"$flags" || { echo "config key $k is not a tapproxy serve flag"; missing=1; }
	done
	# The unit's ExecStart flags must exist too.
	while read -r k; do
		grep -qx -- "$k" <<<"$flags" || { echo "ExecStart flag --$k is not a tapproxy serve flag"; missing=1; }
	done < <(sed -nE 's/^ExecStart=[^ ]+ //p' "$pkg/systemd/tapproxy.service" | grep -oE -- '--[a-z0-9-]+' | sed 's/^--//')
	return "$missing"
}
check "default config keys and unit flags are tapproxy flags" config_keys_are_flags

tune_cli() {
	local rc
	"$bin" tune --root "$repo/tuning/testdata/healthy" --pid 4242 --workers 4 --probe=false
	rc=$?
	[[ $rc == 0 ]] || { echo "healthy: exit $rc, want 0"; return 1; }
	"$bin" tune --root "$repo/tuning/testdata/unhealthy" --listen :53,853 --workers 4 --probe=false --format json >"$work/tune.json"
	rc=$?
	[[ $rc == 2 ]] || { echo "unhealthy: exit $rc, want 2"; return 1; }
	python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["exit_code"] == 2 and d["fail"] >= 1, d' "$work/tune.json" || return 1
	"$bin" tune --format yaml
	rc=$?
	[[ $rc == 64 ]] || { echo "bad flag: exit $rc, want 64 (is tune wired into main.go?)"; return 1; }
}
check "tapproxy tune on the fixture trees (exit 0, 2, 64)" tune_cli

conffile_and_removal() {
	echo "# local edit" >>"$root/etc/tapproxy/tapproxy.yaml"
	dpkg_root -i "$deb" || return 1
	grep -q '^# local edit' "$root/etc/tapproxy/tapproxy.yaml" || { echo "conffile edit lost on reinstall"; return 1; }
	dpkg_root -r tapproxy || return 1
	[[ ! -e $root/usr/bin/tapproxy && -e $root/etc/tapproxy/tapproxy.yaml ]] || { echo "remove: binary kept or conffile lost"; return 1; }
	[[ ! -e $root/etc/systemd/system/multi-user.target.wants/tapproxy.service ]] || { echo "still enabled"; return 1; }
	dpkg_root -P tapproxy || return 1
	[[ ! -e $root/etc/tapproxy/tapproxy.yaml && ! -e $root/var/log/tapproxy ]] || { echo "purge left config or logs"; return 1; }
	grep -q '^tapproxy:' "$root/etc/passwd" || { echo "purge removed the user (Debian keeps it)"; return 1; }
	[[ $(md5sum /etc/passwd /etc/group) == "$passwd_before" ]]
}
check "conffile kept on reinstall; remove; purge (scratch root)" conffile_and_removal

# ---- OpenWrt -----------------------------------------------------------
# uci_to_sh FILE: the UCI file as shell assignments for the stubs below
# (uci_main_OPTION='value'; lists newline-separated).
uci_to_sh() {
	awk '
	function q(s) { gsub(/\047/, "\047\\\047\047", s); return "\047" s "\047" }
	$1 == "config" { sec = $3; gsub(/\047/, "", sec); next }
	$1 == "option" || $1 == "list" {
		name = $2; val = $0
		sub(/^[ \t]*(option|list)[ \t]+[a-z_0-9]+[ \t]+/, "", val); gsub(/^\047|\047$/, "", val)
		var = "uci_" sec "_" name
		if ($1 == "list" && (var in seen)) printf "%s=\"${%s}\n\"%s\n", var, var, q(val)
		else printf "%s=%s\n", var, q(val)
		seen[var] = 1
	}' "$1"
}
init_cmdline() { # UCI_FILE: prints the command procd would run, one argument a line
	local conf=$work/uci.sh
	uci_to_sh "$1" >"$conf"
	sh -c '
		conf=$1 init=$2
		config_load() { . "$conf"; }
		config_get() { eval "_v=\${uci_$2_$3-}"; [ -n "$_v" ] || _v=${4-}; eval "$1=\$_v"; }
		config_get_bool() {
			config_get "$@"
			eval "case \$$1 in 1|on|true|yes|enabled) $1=1 ;; *) $1=0 ;; esac"
		}
		config_list_foreach() {
			_s=$1 _o=$2 _f=$3; shift 3
			eval "_l=\${uci_${_s}_${_o}-}"
			[ -n "$_l" ] || return 0
			_ifs=$IFS; IFS="
"; set -f
			for _i in $_l; do IFS=$_ifs; "$_f" "$_i" "$@"; done
			IFS=$_ifs; set +f
		}
		procd_open_instance() { :; }
		procd_close_instance() { :; }
		procd_set_param() { if [ "$1" = command ]; then shift; printf "%s\n" "$@"; else echo "param: $*" >&2; fi; }
		procd_append_param() { shift; printf "%s\n" "$@"; }
		mkdir() { :; }
		chown() { :; }
		. "$init"
		start_service
	' sh "$conf" "$pkg/openwrt/files/tapproxy.init"
}
openwrt_init() {
	local cfg=$work/tapproxy.uci got want
	# The shipped config is disabled: no command at all.
	got=$(init_cmdline "$pkg/openwrt/files/tapproxy.config" 2>/dev/null)
	[[ -z $got ]] || { echo "disabled config started: $got"; return 1; }
	sed "s/option enabled '0'/option enabled '1'/; s/#option dnstap_tcp/option dnstap_tcp/; s/#list allow/list allow/" \
		"$pkg/openwrt/files/tapproxy.config" >"$cfg"
	echo "	option servfail_on_timeout '1'" >>"$cfg"
	got=$(init_cmdline "$cfg" 2>"$work/params") || return 1
	want="/usr/bin/tapproxy
serve
--listen
0.0.0.0:53
--listen
[::]:53
--upstream
127.0.0.1:5353
--allow
192.168.1.0/24
--timeout
2s
--acl-action
refuse
--rcvbuf
1048576
--log-level
info
--dnstap-tcp
192.168.1.10:6000
--servfail-on-timeout"
	if [[ $got != "$want" ]]; then
		diff <(echo "$want") <(echo "$got")
		return 1
	fi
	grep -q 'param: user tapproxy' "$work/params" && grep -q 'param: capabilities /etc/capabilities/tapproxy.json' "$work/params"
}
check "OpenWrt init: UCI config to command line (stubbed procd)" openwrt_init

uci_options_are_flags() {
	local flags missing=0
	flags=$(serve_flags)
	# Sourcing the init script only defines its variables and functions.
	# shellcheck disable=SC2016
	for o in $(sh -c '. "$1"; echo $VALUE_OPTIONS $LIST_OPTIONS $BOOL_OPTIONS' sh "$pkg/openwrt/files/tapproxy.init"); do
		grep -qx -- "${o//_/-}" <<<"$flags" || { echo "UCI option $o is not a tapproxy serve flag"; missing=1; }
	done
	return "$missing"
}
check "OpenWrt init: every UCI option is a tapproxy flag" uci_options_are_flags

ipk_layout() {
	local ipk x=$work/ipk
	ipk=$("$pkg/openwrt/build-ipk.sh" mipsel_24kc "$work/dist" | tail -1) || return 1
	mkdir -p "$x" && tar -xzf "$ipk" -C "$x" || return 1
	[[ $(cat "$x/debian-binary") == 2.0 ]] || return 1
	tar -tzvf "$x/data.tar.gz" | tee "$x/list"
	for f in ./usr/bin/tapproxy ./etc/init.d/tapproxy ./etc/config/tapproxy ./etc/capabilities/tapproxy.json; do
		grep -q " $f\$" "$x/list" || { echo "missing $f"; return 1; }
	done
	tar -xzOf "$x/control.tar.gz" ./control | tee "$x/control"
	grep -q '^Architecture: mipsel_24kc$' "$x/control" && grep -q '^Require-User: tapproxy=' "$x/control" &&
		[[ $(tar -xzOf "$x/control.tar.gz" ./conffiles) == /etc/config/tapproxy ]] &&
		tar -xzf "$x/data.tar.gz" -C "$x" ./usr/bin/tapproxy &&
		od -An -tx1 -N6 "$x/usr/bin/tapproxy" | grep -q '7f 45 4c 46 01 01'
}
check "OpenWrt .ipk for mipsel_24kc (layout, control, 32-bit LE ELF)" ipk_layout

# ---- cross.sh ----------------------------------------------------------
cross() {
	"$pkg/cross.sh" "$work/cross"
}
if cross >"$work/log" 2>&1; then
	ok "cross.sh: all targets build"
	sed 's/^/     /' "$work/log" | grep -v '^     binaries in'
else
	bad "cross.sh"
fi

finish
