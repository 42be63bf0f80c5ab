// Package tuning owns system checks: it reads /proc and /sys (through a
// configurable root, so it can be tested against fixture trees) and reports
// the settings that decide whether packets are dropped before tapproxy sees
// them, each with the exact sysctl or flag that fixes it. `tapproxy tune` is
// its command-line face.
//
// What it checks (Run), each as one Finding with a status and a fix:
//
//   - net.core.rmem_max / net.core.wmem_max against the requested socket
//     buffers: socket(7) caps SO_RCVBUF/SO_SNDBUF there unless the process
//     holds CAP_NET_ADMIN (SO_RCVBUFFORCE/SO_SNDBUFFORCE).
//   - net.core.netdev_max_backlog, and the per-CPU "dropped" column of
//     /proc/net/softnet_stat (packets lost before any socket saw them).
//   - UDP RcvbufErrors, SndbufErrors and other InErrors since boot, IPv4
//     from the "Udp:" lines of /proc/net/snmp and IPv6 from /proc/net/snmp6.
//   - The "drops" column of /proc/net/udp and /proc/net/udp6 for the sockets
//     on the listen ports, optionally only those of one process (socket
//     inodes from /proc/PID/fd). With a PID, the network files are read from
//     /proc/PID/net, i.e. in that process's network namespace.
//   - CPU count (/sys/devices/system/cpu/online, else /proc/cpuinfo) against
//     the worker count.
//   - Kernel support for SO_REUSEPORT, SO_TIMESTAMPNS and SO_RXQ_OVFL. This
//     is the one live check: it sets each option on a throwaway UDP socket
//     through the Prober interface (LiveProber), not from the root.
//   - CapEff of /proc/PID/status (or /proc/self/status): CAP_NET_BIND_SERVICE
//     for ports below net.ipv4.ip_unprivileged_port_start, CAP_NET_ADMIN when
//     the buffers exceed rmem_max/wmem_max.
//
// Bad input is a finding, never a panic: a missing, unreadable, truncated or
// garbled file becomes a WARN naming the file and what was wrong (one
// exception, documented at the check: a missing /proc/net/snmp6 or udp6 means
// IPv6 is off, which is not a problem). Parsers never trust field counts and
// are fuzzed.
//
// Statuses, from best to worst: OK, SKIP (not checked, e.g. no socket to look
// at yet), WARN (works, but loses packets or features, or could not be
// verified), FAIL (tapproxy will not start or will not work as configured).
// Report.ExitCode maps them to 0 (OK/SKIP), 1 (WARN) and 2 (FAIL).
//
// What it must never do: change anything. It only reads files and opens one
// unbound, throwaway UDP socket per probe; every fix is printed for a human
// (or a configuration tool) to apply. It sends no packet.
package tuning
