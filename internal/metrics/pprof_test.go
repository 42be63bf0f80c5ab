package metrics

import (
	"io"
	"strings"
	"testing"
)

// TestPprofOnlyWhenAsked: the profiler is mounted only with Options.Pprof;
// without it /debug/pprof/ is a 404 like any unknown path.
func TestPprofOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		m, err := New(Sources{Version: "x"}, Options{Pprof: on})
		if err != nil {
			t.Fatal(err)
		}
		ts := newTestServer(t, m)
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap?debug=1"} {
			resp, err := ts.Client().Get(ts.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := 404
			if on {
				want = 200
			}
			if resp.StatusCode != want {
				t.Errorf("Pprof=%v %s: status %d, want %d", on, path, resp.StatusCode, want)
			}
			if on && path == "/debug/pprof/heap?debug=1" && !strings.Contains(string(b), "heap profile") {
				t.Errorf("heap profile missing: %.200q", b)
			}
		}
	}
}
