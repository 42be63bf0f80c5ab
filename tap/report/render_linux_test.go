package report

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapproxy/tapproxy/tap"
)

// TestHTMLRendersInChromium renders the HTML report of a tapproxy file to
// PNG with headless Chromium (no network: the page loads nothing) and
// checks that it rendered without console errors. Set
// TAPPROXY_SCREENSHOT_DIR to keep the image.
func TestHTMLRendersInChromium(t *testing.T) {
	var bin string
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Fatalf("chromium not found on PATH: this test renders the HTML report; install it: apt-get install chromium")
	}
	path := writeTapproxyFile(t, knownTransactions(t), tap.TypesAll)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Read(f, Options{})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	rep.File = "known.fstrm"
	dir := os.Getenv("TAPPROXY_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	htmlPath := filepath.Join(dir, "report.html")
	var buf bytes.Buffer
	if err := rep.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(htmlPath, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	png := filepath.Join(dir, "report.png")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
		"--user-data-dir="+t.TempDir(), "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
		"--window-size=1100,2600", "--screenshot="+png, "file://"+htmlPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, "Uncaught") || (strings.Contains(l, "CONSOLE") && strings.Contains(l, "ERROR")) {
			t.Errorf("console error: %s", l)
		}
	}
	b, err := os.ReadFile(png)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 20000 || string(b[1:4]) != "PNG" {
		t.Errorf("screenshot %s: %d bytes, want a PNG of a rendered report", png, len(b))
	}
	t.Logf("rendered %s to %s (%d bytes)", htmlPath, png, len(b))
}
