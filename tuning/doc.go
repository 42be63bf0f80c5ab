// Package tuning owns system checks: it reads /proc and /sys (through a
// configurable root, so it can be tested against fixture trees) and reports
// the settings that decide whether packets are dropped before tapproxy sees
// them, each with the exact sysctl or flag that fixes it.
package tuning
