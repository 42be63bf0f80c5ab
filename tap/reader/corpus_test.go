package reader

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/miekg/dns"
)

// corpusFiles lists the good files (top level) and the negative ones.
func corpusFiles(t *testing.T) (good, negative []string) {
	t.Helper()
	dir := corpusDir(t)
	g, err := filepath.Glob(filepath.Join(dir, "*.fstrm"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := filepath.Glob(filepath.Join(dir, "negative", "*.fstrm"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range g {
		good = append(good, filepath.Base(f))
	}
	for _, f := range n {
		negative = append(negative, "negative/"+filepath.Base(f))
	}
	if len(good) == 0 || len(negative) == 0 {
		t.Fatalf("corpus %s: %d good and %d negative files", dir, len(good), len(negative))
	}
	return good, negative
}

// TestCorpusCounts: every good file decodes cleanly, with the per-type
// counts, total and both-times count of MANIFEST.tsv, and the command exits
// 0 in every format.
func TestCorpusCounts(t *testing.T) {
	man := readManifest(t)
	good, _ := corpusFiles(t)
	for _, name := range good {
		t.Run(name, func(t *testing.T) {
			e, ok := man[name]
			if !ok {
				t.Fatalf("%s is not in MANIFEST.tsv", name)
			}
			msgs, bad, final := decodeAll(readCorpusFile(t, name))
			if !errors.Is(final, io.EOF) || len(bad) > 0 {
				t.Fatalf("final error %v, bad frames %v", final, bad)
			}
			if !e.stop {
				t.Errorf("MANIFEST says no STOP frame, but the file decoded cleanly")
			}
			if len(msgs) != e.total {
				t.Errorf("%d messages, MANIFEST says %d", len(msgs), e.total)
			}
			if got := typeCounts(msgs); !maps.Equal(got, e.counts) {
				t.Errorf("counts %v, MANIFEST says %v", got, e.counts)
			}
			both := 0
			for _, m := range msgs {
				if !m.QueryTime.IsZero() && !m.ResponseTime.IsZero() {
					both++
				}
			}
			if both != e.bothTimes {
				t.Errorf("%d messages with both times, MANIFEST says %d", both, e.bothTimes)
			}
			for _, f := range []string{"text", "json", "yaml"} {
				code, stdout, stderr := runCommand(t, "--format", f, filepath.Join(corpusDir(t), name))
				if code != ExitOK || stderr != "" {
					t.Errorf("--format %s: exit %d, stderr %q", f, code, stderr)
				}
				if f == "text" {
					if n := strings.Count(stdout, ";; frame "); n != e.total {
						t.Errorf("text output has %d message blocks, want %d", n, e.total)
					}
				}
			}
		})
	}
}

// TestCorpusNegative: every negative file gets its documented exit code,
// after printing every complete message.
func TestCorpusNegative(t *testing.T) {
	man := readManifest(t)
	want := map[string]struct {
		code   int
		msgs   int    // complete messages printed before the error
		stderr string // must appear on stderr
		// countsFromManifest: the MANIFEST counts (made by readers that
		// also stop at the damage) equal what we print.
		countsFromManifest bool
	}{
		"negative/empty.fstrm":                  {ExitNotFrameStream, 0, "empty file (0 bytes)", false},
		"negative/named-after-roll-empty.fstrm": {ExitNotFrameStream, 0, "empty file (0 bytes)", false},
		// make-corpus.sh inserted one non-protobuf frame first into
		// named-auth-file's 24 messages; we skip it and print the 24
		// (golang dnstap stops there, so MANIFEST says 0).
		"negative/garbage-data-frame.fstrm":   {ExitBadFrame, 24, "data frame 0 at offset", false},
		"negative/named-killed-no-stop.fstrm": {ExitTruncated, 83, "truncated in the middle of a frame", true},
		"negative/no-stop-frame.fstrm":        {ExitTruncated, 24, "no STOP frame", true},
		"negative/truncated-mid-frame.fstrm":  {ExitTruncated, 23, "truncated in the middle of a frame", true},
		"negative/wrong-content-type.fstrm":   {ExitNotFrameStream, 0, `"protobuf:dnstap.DnstaX"`, false},
	}
	_, negative := corpusFiles(t)
	for _, name := range negative {
		t.Run(name, func(t *testing.T) {
			w, ok := want[name]
			if !ok {
				t.Fatalf("no expectation for %s: add it to this table", name)
			}
			code, stdout, stderr := runCommand(t, "--format", "json", filepath.Join(corpusDir(t), name))
			if code != w.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, w.code, stderr)
			}
			if !strings.Contains(stderr, w.stderr) {
				t.Errorf("stderr %q does not mention %q", stderr, w.stderr)
			}
			lines := nonEmptyLines(stdout)
			if len(lines) != w.msgs {
				t.Errorf("%d messages printed, want %d", len(lines), w.msgs)
			}
			counts := map[string]int{}
			for _, l := range lines {
				var m struct{ Type string }
				if err := json.Unmarshal([]byte(l), &m); err != nil {
					t.Fatalf("bad JSON line %q: %v", l, err)
				}
				counts[m.Type]++
			}
			if w.countsFromManifest {
				if e := man[name]; !maps.Equal(counts, e.counts) {
					t.Errorf("counts %v, MANIFEST says %v", counts, e.counts)
				}
			}
			if w.code == ExitTruncated && !strings.Contains(stderr, fmt.Sprintf("%d complete messages", w.msgs)) {
				t.Errorf("stderr %q does not give the complete message count", stderr)
			}
		})
	}
	// The garbage frame is the only bad one, and the rest are exactly the
	// messages of the file it was derived from.
	orig, _, _ := decodeAll(readCorpusFile(t, "named-auth-file.fstrm"))
	got, bad, final := decodeAll(readCorpusFile(t, "negative/garbage-data-frame.fstrm"))
	if len(bad) != 1 || bad[0].Frame != 0 || !errors.Is(final, io.EOF) {
		t.Fatalf("garbage-data-frame: bad frames %v, final %v", bad, final)
	}
	if len(got) != len(orig) {
		t.Fatalf("garbage-data-frame: %d messages, named-auth-file has %d", len(got), len(orig))
	}
	for i := range got {
		if string(got[i].Raw) != string(orig[i].Raw) || got[i].Frame != i+1 {
			t.Errorf("garbage-data-frame message %d (frame %d) differs from named-auth-file's", i, got[i].Frame)
		}
	}
}

func nonEmptyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// expectedPairs is derived from each file's section in the corpus README
// and its .queries.txt (see the comments), not from running the reader.
var expectedPairs = map[string]struct{ pairs, uq, ur int }{
	// valid, trailing-junk, qdcount-2 (FORMERR, no question) and
	// opcode-iquery (NOTIMP, no question), over UDP and TCP; dnsdist logs
	// no other malformed query.
	"dnsdist-malformed.fstrm": {8, 0, 0},
	// 7 kdig commands, big retried over TCP: 8 exchanges.
	"dnsdist-proxy.fstrm": {8, 0, 0},
	// two queries.
	"dnsdist-tcp-transport.fstrm": {2, 0, 0},
	// three queries in one kdig run.
	"kdig-tool.fstrm": {3, 0, 0},
	// big and medium, each truncated over UDP and retried over TCP with
	// the same ID: 4 exchanges.
	"kdig-truncated-retry.fstrm": {4, 0, 0},
	// 11 kdig commands, big retried over TCP: 12 exchanges.
	"named-auth-file.fstrm": {12, 0, 0},
	// valid and trailing-junk over UDP and TCP; the two NOTIMP answers
	// to opcode-iquery have no query message.
	"named-malformed.fstrm": {4, 0, 2},
	// one UDP query and one TCP NXDOMAIN.
	"named-unix.fstrm": {2, 0, 0},
	// 19 client queries (10 over UDP, 9 over TCP: short-header is not
	// logged over TCP). No client response for short-header (UDP only),
	// qdcount-2, opcode-iquery and qr-set: 4 + 3 = 7 unmatched. 12 client
	// pairs plus the 2 resolver exchanges (valid, trailing-junk over UDP).
	"unbound-malformed.fstrm": {14, 7, 0},
	// 10 client exchanges, 6 forwarder (fwd.test once, example.com five
	// times), 6 resolver (www A, www AAAA, nope, medium, big UDP, big TCP).
	"unbound-resolver.fstrm": {22, 0, 0},
	// two client queries, each resolved through named.
	"unbound-tcp-transport.fstrm": {4, 0, 0},
}

func TestCorpusPairs(t *testing.T) {
	good, _ := corpusFiles(t)
	for _, name := range good {
		t.Run(name, func(t *testing.T) {
			w, ok := expectedPairs[name]
			if !ok {
				t.Fatalf("no pairing expectation for %s: derive one from the README", name)
			}
			msgs, _, _ := decodeAll(readCorpusFile(t, name))
			pairs, uq, ur := Match(msgs)
			if len(pairs) != w.pairs || len(uq) != w.uq || len(ur) != w.ur {
				t.Fatalf("%d pairs, %d unmatched queries, %d unmatched responses; want %d, %d, %d",
					len(pairs), len(uq), len(ur), w.pairs, w.uq, w.ur)
			}
			for _, p := range pairs {
				checkPairInvariants(t, p)
			}
			if extra, ok := corpusPairChecks[name]; ok {
				extra(t, pairs, uq, ur)
			}
		})
	}
}

// checkPairInvariants re-checks the rule on each pair independently of Match.
func checkPairInvariants(t *testing.T, p Pair) {
	t.Helper()
	q, r := p.Query, p.Response
	if !q.IsQuery() && p.Rule != SelfContained || !r.IsResponse() {
		t.Errorf("pair %d/%d: types %s/%s", q.Frame, r.Frame, q.Type, r.Type)
	}
	if endpointsOf(q) != endpointsOf(r) {
		t.Errorf("pair %d/%d: endpoints differ", q.Frame, r.Frame)
	}
	if q.QueryMsg.Header.ID != r.ResponseMsg.Header.ID || !r.ResponseMsg.Header.QR() {
		t.Errorf("pair %d/%d: ID/QR mismatch", q.Frame, r.Frame)
	}
	if p.LatencyKnown && p.Latency < 0 {
		t.Errorf("pair %d/%d: negative latency %v", q.Frame, r.Frame, p.Latency)
	}
	if p.Rule == ByQuestion && !q.QueryMsg.Question.Equal(r.ResponseMsg.Question) {
		t.Errorf("pair %d/%d: questions differ", q.Frame, r.Frame)
	}
}

var corpusPairChecks = map[string]func(t *testing.T, pairs []Pair, uq, ur []*Message){
	"dnsdist-malformed.fstrm": func(t *testing.T, pairs []Pair, _, _ []*Message) {
		// FORMERR and NOTIMP have no question: paired on ID + 5-tuple.
		var byID []string
		for _, p := range pairs {
			if p.Rule == ByID {
				byID = append(byID, rcodeName(int(p.Response.ResponseMsg.Header.Rcode())))
			}
		}
		slices.Sort(byID)
		if want := []string{"FORMERR", "FORMERR", "NOTIMP", "NOTIMP"}; !slices.Equal(byID, want) {
			t.Errorf("ID-only pairs have rcodes %v, want %v", byID, want)
		}
	},
	"dnsdist-proxy.fstrm": func(t *testing.T, pairs []Pair, _, _ []*Message) {
		// dnsdist's responses carry the query's query_time exactly.
		for _, p := range pairs {
			if !p.Response.QueryTime.Equal(p.Query.QueryTime) {
				t.Errorf("pair %d/%d: response query_time %v != query's %v", p.Query.Frame, p.Response.Frame, p.Response.QueryTime, p.Query.QueryTime)
			}
		}
	},
	"kdig-truncated-retry.fstrm": func(t *testing.T, pairs []Pair, _, _ []*Message) {
		// Same DNS ID on two 5-tuples: one UDP pair with TC=1 and one TCP
		// pair without, per ID.
		byID := map[uint16][]string{}
		for _, p := range pairs {
			tc := p.Response.ResponseMsg.Header.TC()
			byID[p.Query.QueryMsg.Header.ID] = append(byID[p.Query.QueryMsg.Header.ID], fmt.Sprintf("%s tc=%v", p.Query.ProtocolName(), tc))
		}
		if len(byID) != 2 {
			t.Fatalf("pairs span %d IDs, want 2", len(byID))
		}
		for id, l := range byID {
			slices.Sort(l)
			if want := []string{"TCP tc=false", "UDP tc=true"}; !slices.Equal(l, want) {
				t.Errorf("ID %d: %v, want %v", id, l, want)
			}
		}
	},
	"named-auth-file.fstrm": func(t *testing.T, pairs []Pair, _, _ []*Message) {
		// Only the RD=1 query is answered with CLIENT_RESPONSE.
		cross := 0
		for _, p := range pairs {
			if p.Response.Type != p.Query.Type+1 {
				cross++
				if p.Query.Type != dnstap.Message_AUTH_QUERY || p.Response.Type != dnstap.Message_CLIENT_RESPONSE || p.Query.QueryMsg.Header.Flags&(1<<8) == 0 {
					t.Errorf("unexpected cross-type pair %s/%s", p.Query.Type, p.Response.Type)
				}
			}
		}
		if cross != 1 {
			t.Errorf("%d cross-type pairs, want 1", cross)
		}
	},
	"named-malformed.fstrm": func(t *testing.T, _ []Pair, _, ur []*Message) {
		for _, r := range ur {
			h := r.ResponseMsg.Header
			if h.ID != 0xBAD7 || h.Rcode() != dns.RcodeNotImplemented || h.QDCount != 0 {
				t.Errorf("unmatched response %d: id %#x rcode %d qdcount %d, want the NOTIMP to opcode-iquery", r.Frame, h.ID, h.Rcode(), h.QDCount)
			}
		}
	},
	"unbound-malformed.fstrm": func(t *testing.T, _ []Pair, uq, _ []*Message) {
		var got []string
		for _, q := range uq {
			got = append(got, fmt.Sprintf("%s %#x", q.ProtocolName(), binary.BigEndian.Uint16(q.QueryMsg.Wire)))
		}
		slices.Sort(got)
		want := []string{"TCP 0xbad4", "TCP 0xbad5", "TCP 0xbad7", "UDP 0xbad1", "UDP 0xbad4", "UDP 0xbad5", "UDP 0xbad7"}
		if !slices.Equal(got, want) {
			t.Errorf("unmatched queries %v, want %v (short-header, qdcount-2, qr-set, opcode-iquery)", got, want)
		}
	},
	"unbound-resolver.fstrm": func(t *testing.T, pairs []Pair, _, _ []*Message) {
		by := map[string]int{}
		port0 := 0
		for _, p := range pairs {
			by[p.Query.Type.String()]++
			if p.Query.ProtocolName() == "TCP" && p.Query.QueryPort == 0 {
				port0++
			}
		}
		if want := map[string]int{"CLIENT_QUERY": 10, "FORWARDER_QUERY": 6, "RESOLVER_QUERY": 6}; !maps.Equal(by, want) {
			t.Errorf("pairs by query type %v, want %v", by, want)
		}
		if port0 != 1 {
			t.Errorf("%d upstream TCP pairs with query_port 0, want 1 (big's retry)", port0)
		}
	},
}

// inspectScript runs the corpus's Python reader on every file named in
// argv[2:] in one process (interpreter start-up is slow) and prints, per
// file, its pairs as [query frame, response frame] and its unmatched counts.
const inspectScript = `
import json, sys
sys.path.insert(0, sys.argv[1])
import dnstap_inspect as d
out = {}
for f in sys.argv[2:]:
    r = d.analyse(f, allow_no_stop=True)
    out[f] = {"pairs": [[q["idx"], x["idx"]] for q, x, _ in r["_pairs"]],
              "unmatched_queries": r["unmatched_queries"],
              "unmatched_responses": r["unmatched_responses"]}
print(json.dumps(out))
`

// TestPairsAgainstInspect cross-checks Match with the corpus's independent
// Python reader (tools/dnstap_inspect.py, its --pairs analysis): the same
// pairs, frame for frame, and the same unmatched counts, for every file it
// can read (good files, and the damaged ones with allow_no_stop).
func TestPairsAgainstInspect(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed to run tools/dnstap_inspect.py: ", err)
	}
	dir := corpusDir(t)
	tools := filepath.Join(dir, "tools")
	if _, err := os.Stat(filepath.Join(tools, "dnstap_inspect.py")); err != nil {
		t.Fatal(err)
	}
	good, _ := corpusFiles(t)
	files := append(good, "negative/named-killed-no-stop.fstrm", "negative/no-stop-frame.fstrm", "negative/truncated-mid-frame.fstrm")
	args := []string{"-c", inspectScript, tools}
	for _, f := range files {
		args = append(args, filepath.Join(dir, f))
	}
	out, err := exec.Command(py, args...).Output()
	if err != nil {
		t.Fatalf("dnstap_inspect.py: %v", err)
	}
	var theirs map[string]struct {
		Pairs              [][2]int
		UnmatchedQueries   int `json:"unmatched_queries"`
		UnmatchedResponses int `json:"unmatched_responses"`
	}
	if err := json.Unmarshal(out, &theirs); err != nil {
		t.Fatalf("dnstap_inspect.py output: %v", err)
	}
	for _, name := range files {
		t.Run(name, func(t *testing.T) {
			th, ok := theirs[filepath.Join(dir, name)]
			if !ok || len(th.Pairs) == 0 {
				t.Fatalf("dnstap_inspect.py found no pairs in %s", name)
			}
			msgs, _, _ := decodeAll(readCorpusFile(t, name))
			pairs, uq, ur := Match(msgs)
			var ours, their []string
			for _, p := range pairs {
				ours = append(ours, strconv.Itoa(p.Query.Frame)+"/"+strconv.Itoa(p.Response.Frame))
			}
			for _, p := range th.Pairs {
				their = append(their, strconv.Itoa(p[0])+"/"+strconv.Itoa(p[1]))
			}
			slices.Sort(ours)
			slices.Sort(their)
			if !slices.Equal(ours, their) {
				t.Errorf("pairs (query/response frame)\n ours:   %v\n theirs: %v", ours, their)
			}
			if th.UnmatchedQueries != len(uq) || th.UnmatchedResponses != len(ur) {
				t.Errorf("unmatched queries/responses: inspect %d/%d, ours %d/%d", th.UnmatchedQueries, th.UnmatchedResponses, len(uq), len(ur))
			}
		})
	}
}
