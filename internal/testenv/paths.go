package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// ModuleRoot returns the directory holding tapproxy's go.mod, found by
// walking up from the working directory (go test runs each package's tests
// in the package directory).
func ModuleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("testenv: getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("testenv: no go.mod above the working directory; run the tests from inside the tapproxy module")
		}
		dir = parent
	}
}

// DnstapCorpus returns the directory of the shared dnstap corpus,
// ../shared/testdata/dnstap relative to the module root (CI clones the repo
// and puts shared/ beside it).
func DnstapCorpus(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(filepath.Dir(ModuleRoot(t)), "shared", "testdata", "dnstap")
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() {
		t.Fatalf("testenv: dnstap corpus missing: %s is not a directory (shared/ must sit beside the repository clone: ../shared/testdata/dnstap)", dir)
	}
	return dir
}

// toolPackages maps each external tool the tests use to the Debian 12
// package that installs it; RequireTool names the package when a tool is
// missing, and .ci/run installs all of them.
var toolPackages = map[string]string{
	"unbound":           "unbound",
	"unbound-checkconf": "unbound",
	"named":             "bind9",
	"named-checkconf":   "bind9-utils",
	"named-checkzone":   "bind9-utils",
	"dig":               "bind9-dnsutils",
	"kdig":              "knot-dnsutils",
	"dnsperf":           "dnsperf",
	"fstrm_capture":     "fstrm-bin",
	"fstrm_dump":        "fstrm-bin",
	"fstrm_replay":      "fstrm-bin",
	"dnstap":            "golang-github-dnstap-golang-dnstap-cli",
	"dnstap-ldns":       "dnstap-ldns",
	"dnsdist":           "dnsdist",
	"python3":           "python3",
	"ip":                "iproute2",
	"ss":                "iproute2",
}

// sbinDirs are searched after $PATH: daemons such as named and unbound live
// in /usr/sbin, which a non-login environment may leave off $PATH.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

// RequireTool returns the path of an external program, or fails the test
// naming the Debian package that provides it. It never skips: a test that
// needs a tool must not pass silently on a machine without it.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range sbinDirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	pkg, ok := toolPackages[name]
	if !ok {
		pkg = "(unknown package: add it to testenv.toolPackages)"
	}
	t.Fatalf("testenv: required tool %q not found on PATH or in %v; install it: apt-get install %s", name, sbinDirs, pkg)
	return ""
}

// RaceEnabled reports whether the tests (and so the tapproxy binary they
// build) run under the race detector, whose shadow memory inflates RSS.
func RaceEnabled() bool { return raceEnabled }
