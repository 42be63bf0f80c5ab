package reader

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/miekg/dns"
)

// TestJSONLines: every line of --format json parses with encoding/json, and
// carries the message's fields, including the DNS bytes in base64.
func TestJSONLines(t *testing.T) {
	good, _ := corpusFiles(t)
	for _, name := range good {
		msgs, _, _ := decodeAll(readCorpusFile(t, name))
		code, stdout, stderr := runCommand(t, "--format", "json", filepath.Join(corpusDir(t), name))
		if code != ExitOK {
			t.Fatalf("%s: exit %d: %s", name, code, stderr)
		}
		lines := nonEmptyLines(stdout)
		if len(lines) != len(msgs) {
			t.Fatalf("%s: %d lines for %d messages", name, len(lines), len(msgs))
		}
		for i, l := range lines {
			var v struct {
				Frame           int             `json:"frame"`
				Type            string          `json:"type"`
				QueryTime       string          `json:"query_time"`
				ResponseTime    string          `json:"response_time"`
				QueryMessage    *map[string]any `json:"query_message"`
				ResponseMessage *map[string]any `json:"response_message"`
			}
			if err := json.Unmarshal([]byte(l), &v); err != nil {
				t.Fatalf("%s line %d: %v: %s", name, i, err, l)
			}
			m := msgs[i]
			if v.Frame != m.Frame || v.Type != m.Type.String() {
				t.Errorf("%s line %d: frame %d type %s, want %d %s", name, i, v.Frame, v.Type, m.Frame, m.Type)
			}
			for _, tt := range []struct {
				s    string
				want time.Time
			}{{v.QueryTime, m.QueryTime}, {v.ResponseTime, m.ResponseTime}} {
				if tt.want.IsZero() != (tt.s == "") {
					t.Errorf("%s line %d: time %q present, want %v", name, i, tt.s, tt.want)
					continue
				}
				if tt.s == "" {
					continue
				}
				got, err := time.Parse(time.RFC3339Nano, tt.s)
				if err != nil || !got.Equal(tt.want) || len(tt.s) != len("2006-01-02T15:04:05.000000000Z") {
					t.Errorf("%s line %d: time %q (%v), want %v with 9 digits", name, i, tt.s, err, tt.want)
				}
			}
			for _, d := range []struct {
				j   *map[string]any
				dns *DNS
			}{{v.QueryMessage, m.QueryMsg}, {v.ResponseMessage, m.ResponseMsg}} {
				if (d.j == nil) != (d.dns == nil) {
					t.Errorf("%s line %d: DNS message presence differs", name, i)
					continue
				}
				if d.j == nil {
					continue
				}
				w, _ := (*d.j)["wire"].(string)
				raw, err := base64.StdEncoding.DecodeString(w)
				if err != nil || !bytes.Equal(raw, d.dns.Wire) {
					t.Errorf("%s line %d: wire does not round-trip: %v", name, i, err)
				}
				if sz, _ := (*d.j)["size"].(float64); int(sz) != len(d.dns.Wire) {
					t.Errorf("%s line %d: size %v, want %d", name, i, sz, len(d.dns.Wire))
				}
				if _, ok := (*d.j)["malformed"]; ok != (d.dns.UnpackErr != nil) {
					t.Errorf("%s line %d: malformed note present=%v, unpack error %v", name, i, ok, d.dns.UnpackErr)
				}
				if d.dns.HasHeader {
					if id, _ := (*d.j)["id"].(float64); uint16(id) != d.dns.Header.ID {
						t.Errorf("%s line %d: id %v, want %d", name, i, id, d.dns.Header.ID)
					}
				}
			}
		}
	}
}

// TestYAMLOutput checks --format yaml. When PyYAML is installed, every
// document is parsed with yaml.safe_load_all and must equal the JSON output
// of the same file, object for object. A structural check runs always:
// documents start with "---", keys are identifiers, indentation grows by
// two, and every scalar is a number, a boolean or a double-quoted string.
func TestYAMLOutput(t *testing.T) {
	good, negative := corpusFiles(t)
	havePyYAML := exec.Command("python3", "-c", "import yaml").Run() == nil
	if havePyYAML {
		t.Log("PyYAML found: YAML output is parsed and compared with the JSON output")
	} else {
		t.Log("PyYAML not installed: structural YAML check only")
	}
	files := append(good, negative...)
	var compare []string // name, YAML file, JSON file, ...
	dir := t.TempDir()
	for _, name := range files {
		path := filepath.Join(corpusDir(t), name)
		for _, pairs := range []bool{false, true} {
			args := []string{"--format", "yaml", path}
			jargs := []string{"--format", "json", path}
			if pairs {
				args = append(args, "--pairs")
				jargs = append(jargs, "--pairs")
			}
			_, yout, _ := runCommand(t, args...)
			_, jout, _ := runCommand(t, jargs...)
			docs := strings.Count(yout, "---\n")
			if docs != len(nonEmptyLines(jout)) {
				t.Errorf("%s pairs=%v: %d YAML documents, %d JSON lines", name, pairs, docs, len(nonEmptyLines(jout)))
			}
			checkYAMLStructure(t, name, yout)
			if docs > 0 {
				base := filepath.Join(dir, strings.NewReplacer("/", "_", ".", "_").Replace(name)+map[bool]string{false: "", true: "_pairs"}[pairs])
				writeFile(t, base+".yaml", yout)
				writeFile(t, base+".json", jout)
				compare = append(compare, name+map[bool]string{false: "", true: " --pairs"}[pairs], base+".yaml", base+".json")
			}
		}
	}
	if havePyYAML {
		// One interpreter for all files: start-up is slow.
		out, err := exec.Command("python3", append([]string{"-c", pyYAMLCompare}, compare...)...).CombinedOutput()
		if err != nil {
			t.Errorf("PyYAML parse of the YAML output does not match the JSON output: %v\n%s", err, out)
		}
		if n := strings.Count(string(out), "ok "); n != len(compare)/3 {
			t.Errorf("PyYAML compared %d outputs, want %d:\n%s", n, len(compare)/3, out)
		}
	}
}

var (
	yamlKeyLine  = regexp.MustCompile(`^( *)(- )?([a-z_0-9]+):( (.*))?$`)
	yamlItemLine = regexp.MustCompile(`^( *)- (.*)$`)
	yamlScalar   = regexp.MustCompile(`^(-?[0-9]+|true|false|\{\}|\[\]|"([^"\\]|\\[\\"nrtxuU0-9a-f])*")$`)
)

func checkYAMLStructure(t *testing.T, name, out string) {
	t.Helper()
	prevIndent := 0
	for i, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if l == "" {
			continue
		}
		if l == "---" {
			prevIndent = 0
			continue
		}
		var indent int
		var value string
		if m := yamlKeyLine.FindStringSubmatch(l); m != nil {
			indent, value = len(m[1]), m[5]
			if m[2] != "" {
				indent += 2
			}
		} else if m := yamlItemLine.FindStringSubmatch(l); m != nil {
			indent, value = len(m[1]), m[2]
		} else {
			t.Fatalf("%s: YAML line %d is neither key nor item: %q", name, i, l)
		}
		if indent%2 != 0 || indent > prevIndent+4 {
			t.Fatalf("%s: YAML line %d: bad indentation %d after %d: %q", name, i, indent, prevIndent, l)
		}
		prevIndent = indent
		if value != "" && !yamlScalar.MatchString(value) {
			t.Fatalf("%s: YAML line %d: scalar %q is not a number, boolean or quoted string", name, i, value)
		}
		for _, c := range l {
			if c < 0x20 || c > 0x7e {
				t.Fatalf("%s: YAML line %d has a non-printable or non-ASCII character", name, i)
			}
		}
	}
}

// pyYAMLCompare takes (name, YAML file, JSON file) triples.
const pyYAMLCompare = `
import json, sys, yaml
args = sys.argv[1:]
bad = 0
for k in range(0, len(args), 3):
    name, yf, jf = args[k:k+3]
    y = list(yaml.safe_load_all(open(yf)))
    j = [json.loads(l) for l in open(jf) if l.strip()]
    if y == j:
        print("ok %s: %d documents" % (name, len(y)))
        continue
    bad += 1
    for i, (a, b) in enumerate(zip(y, j)):
        if a != b:
            print("%s: document %d differs:\n yaml %r\n json %r" % (name, i, a, b))
            break
    else:
        print("%s: %d yaml documents, %d json lines" % (name, len(y), len(j)))
sys.exit(1 if bad else 0)
`

// TestTextOutput: dig-like rendering, malformed payloads shown as hex with a
// note, and the tapproxy annotation decoded.
func TestTextOutput(t *testing.T) {
	// unbound-malformed holds the 5-byte short-header query (frame 4).
	code, out, _ := runCommand(t, filepath.Join(corpusDir(t), "unbound-malformed.fstrm"))
	if code != ExitOK {
		t.Fatalf("exit %d", code)
	}
	blocks := strings.Split(out, "\n\n;; frame ")
	var short string
	for _, b := range blocks {
		if strings.HasPrefix(b, "4: ") {
			short = b
		}
	}
	for _, want := range []string{"CLIENT_QUERY INET/UDP 127.0.0.1:49386 -> 127.0.0.1:15354", ";; QUERY MESSAGE (5 bytes):", ";; malformed: ", ";; 00000000  ba d1 01 00 00"} {
		if !strings.Contains(short, want) {
			t.Errorf("short-header block lacks %q:\n%s", want, short)
		}
	}
	if !strings.Contains(out, ";; flags: qr rd ra; QUERY: 1, ANSWER: 1") || !strings.Contains(out, ";; QUESTION SECTION:\n;www.tapproxy.test.\tIN\t A") {
		t.Errorf("no dig-like message in:\n%.2000s", out)
	}

	q := dnsQuery(t, 7, "a.example.", dns.TypeA)
	extra := []byte("tapproxy/1 seq=42 up=192.0.2.53:53 qdelay=1234 rtt=56789 total=60000 flags=timeout,servfail")
	m := messagesOf(t, spec{typ: dnstap.Message_CLIENT_QUERY, qaddr: "::1", qport: 5300, raddr: "::1", rport: 53, qmsg: q, extra: extra, identity: []byte("id\xff")}.marshal(t))[0]
	var b bytes.Buffer
	if err := NewPrinter(&b, Text).Message(m); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"INET6/- [::1]:5300 -> [::1]:53",
		`;; extra: "tapproxy/1 seq=42 `,
		";; annotation: seq=42 up=192.0.2.53:53 qdelay=1.234µs rtt=56.789µs total=60µs flags=timeout,servfail",
		`;; identity: "id\xff"`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := NewPrinter(&b, JSON).Message(m); err != nil {
		t.Fatal(err)
	}
	var j struct {
		IdentityBase64 string `json:"identity_base64"`
		Extra          string `json:"extra"`
		Annotation     struct {
			Seq      uint64   `json:"seq"`
			Up       string   `json:"up"`
			QDelayNs int64    `json:"qdelay_ns"`
			ProxyNs  *int64   `json:"proxy_ns"`
			Flags    []string `json:"flags"`
		} `json:"annotation"`
	}
	if err := json.Unmarshal(b.Bytes(), &j); err != nil {
		t.Fatal(err)
	}
	if j.IdentityBase64 != base64.StdEncoding.EncodeToString([]byte("id\xff")) || j.Extra != string(extra) ||
		j.Annotation.Seq != 42 || j.Annotation.Up != "192.0.2.53:53" || j.Annotation.QDelayNs != 1234 ||
		j.Annotation.ProxyNs != nil || !reflect.DeepEqual(j.Annotation.Flags, []string{"timeout", "servfail"}) {
		t.Errorf("JSON %s", b.String())
	}
}

// TestPairsOutput: --pairs text lists every pair and unmatched message and
// a summary; the JSON form has one object per line with a kind.
func TestPairsOutput(t *testing.T) {
	path := filepath.Join(corpusDir(t), "named-malformed.fstrm")
	code, out, _ := runCommand(t, "--pairs", path)
	if code != ExitOK {
		t.Fatalf("exit %d", code)
	}
	if strings.Count(out, "PAIR rule=question latency=") != 4 || strings.Count(out, "UNMATCHED RESPONSE\n  R #") != 2 ||
		!strings.HasSuffix(out, ";; 4 pairs, 0 unmatched queries, 2 unmatched responses\n") {
		t.Errorf("pairs text:\n%s", out)
	}
	_, out, _ = runCommand(t, "--pairs", "--format", "json", path)
	kinds := map[string]int{}
	for _, l := range nonEmptyLines(out) {
		var v struct {
			Kind      string         `json:"kind"`
			LatencyNs *int64         `json:"latency_ns"`
			Query     map[string]any `json:"query"`
		}
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		kinds[v.Kind]++
		if v.Kind == "pair" && (v.LatencyNs == nil || *v.LatencyNs < 0 || v.Query == nil) {
			t.Errorf("pair line %s", l)
		}
	}
	if !reflect.DeepEqual(kinds, map[string]int{"pair": 4, "unmatched_response": 2, "summary": 1}) {
		t.Errorf("kinds %v", kinds)
	}
}

func TestYAMLStringEscaping(t *testing.T) {
	var b bytes.Buffer
	writeYAMLString(&b, "a\"b\\c\n\t\x01\x7fé€😀")
	want := `"a\"b\\c\n\t\x01\x7f\xe9\u20ac\U0001f600"`
	if b.String() != want {
		t.Errorf("got %s, want %s", b.String(), want)
	}
}
