package tuning

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// WriteText prints one line per finding, "STATUS  check: message", the fix
// indented below it, then a summary line. The format is for people; scripts
// use WriteJSON.
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	sysctls := false
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "%-4s  %s: %s\n", f.Status, f.Check, f.Message)
		if f.Fix != "" && f.Status != OK {
			fmt.Fprintf(&b, "      fix: %s\n", f.Fix)
			if f.Status >= Warn && strings.Contains(f.Fix, "sysctl -w") {
				sysctls = true
			}
		}
	}
	if sysctls {
		b.WriteString("\nsysctl -w lasts until reboot: put the same settings in /etc/sysctl.d/90-tapproxy.conf (name = value).\n")
	}
	fmt.Fprintf(&b, "\n%d OK, %d SKIP, %d WARN, %d FAIL\n", r.Count(OK), r.Count(Skip), r.Count(Warn), r.Count(Fail))
	_, err := io.WriteString(w, b.String())
	return err
}

// jsonReport is the --format json document.
type jsonReport struct {
	Findings []Finding `json:"findings"`
	OK       int       `json:"ok"`
	Skip     int       `json:"skip"`
	Warn     int       `json:"warn"`
	Fail     int       `json:"fail"`
	ExitCode int       `json:"exit_code"`
}

// WriteJSON prints the report as one indented JSON object: "findings"
// (check, status, message, fix), the counts per status and the exit code.
func (r Report) WriteJSON(w io.Writer) error {
	f := r.Findings
	if f == nil {
		f = []Finding{}
	}
	b, err := json.MarshalIndent(jsonReport{Findings: f, OK: r.Count(OK), Skip: r.Count(Skip),
		Warn: r.Count(Warn), Fail: r.Count(Fail), ExitCode: r.ExitCode()}, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
