package reader

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/proto"
)

// moduleRoot walks up from the test's directory to go.mod.
func moduleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// corpusDir is ../shared/testdata/dnstap from the module root (CI puts
// shared/ beside the clone). Missing corpus is a failure, never a skip.
func corpusDir(t testing.TB) string {
	t.Helper()
	d := filepath.Join(moduleRoot(t), "..", "shared", "testdata", "dnstap")
	if _, err := os.Stat(filepath.Join(d, "MANIFEST.tsv")); err != nil {
		t.Fatalf("dnstap corpus missing (want %s with MANIFEST.tsv beside the module): %v", d, err)
	}
	return d
}

type manifestEntry struct {
	file      string // relative to the corpus dir
	total     int
	counts    map[string]int
	bothTimes int
	stop      bool
}

// readManifest parses MANIFEST.tsv (header line, tab-separated).
func readManifest(t testing.TB) map[string]manifestEntry {
	t.Helper()
	f, err := os.Open(filepath.Join(corpusDir(t), "MANIFEST.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var cols map[string]int
	out := make(map[string]manifestEntry)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if cols == nil {
			cols = make(map[string]int)
			for i, c := range fields {
				cols[c] = i
			}
			for _, want := range []string{"file", "total", "counts", "both_times", "stop_frame"} {
				if _, ok := cols[want]; !ok {
					t.Fatalf("MANIFEST.tsv has no %q column", want)
				}
			}
			continue
		}
		e := manifestEntry{file: fields[cols["file"]], counts: map[string]int{}}
		if e.total, err = strconv.Atoi(fields[cols["total"]]); err != nil {
			t.Fatalf("MANIFEST.tsv %s: total: %v", e.file, err)
		}
		if e.bothTimes, err = strconv.Atoi(fields[cols["both_times"]]); err != nil {
			t.Fatalf("MANIFEST.tsv %s: both_times: %v", e.file, err)
		}
		e.stop = fields[cols["stop_frame"]] == "yes"
		if c := fields[cols["counts"]]; c != "-" {
			for _, kv := range strings.Split(c, ",") {
				k, v, ok := strings.Cut(kv, "=")
				n, err := strconv.Atoi(v)
				if !ok || err != nil {
					t.Fatalf("MANIFEST.tsv %s: bad count %q", e.file, kv)
				}
				e.counts[k] = n
			}
		}
		out[e.file] = e
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("MANIFEST.tsv lists no files")
	}
	return out
}

// decodeAll reads every message of data. final is the terminal error
// (io.EOF for a clean end); bad lists the frames that did not decode.
func decodeAll(data []byte) (msgs []*Message, bad []*FrameError, final error) {
	d := NewDecoder(bytes.NewReader(data), 0)
	for {
		m, err := d.Next()
		if err != nil {
			var fe *FrameError
			if errors.Is(err, ErrBadDnstap) && errors.As(err, &fe) {
				bad = append(bad, fe)
				continue
			}
			return msgs, bad, err
		}
		msgs = append(msgs, m)
	}
}

func readCorpusFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(corpusDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func typeCounts(msgs []*Message) map[string]int {
	c := make(map[string]int)
	for _, m := range msgs {
		c[m.Type.String()]++
	}
	return c
}

// runCommand runs "tapproxy read ARGS" as read.go does and returns the exit
// code and outputs.
func runCommand(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	o, err := ParseArgs(args, &stderr)
	if err != nil {
		t.Fatalf("ParseArgs(%q): %v", args, err)
	}
	code := Run(context.Background(), o, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// ---------------------------------------------------------------- builders

func control(typ uint32, contentTypes ...string) []byte {
	var p []byte
	p = binary.BigEndian.AppendUint32(p, typ)
	for _, c := range contentTypes {
		p = binary.BigEndian.AppendUint32(p, controlFieldContentTyp)
		p = binary.BigEndian.AppendUint32(p, uint32(len(c)))
		p = append(p, c...)
	}
	b := binary.BigEndian.AppendUint32(nil, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
	return append(b, p...)
}

func dataFrame(p []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(p))), p...)
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// fileOf is a well-formed Frame Streams file holding payloads.
func fileOf(payloads ...[]byte) []byte {
	parts := [][]byte{control(controlStart, ContentType)}
	for _, p := range payloads {
		parts = append(parts, dataFrame(p))
	}
	parts = append(parts, control(controlStop))
	return concat(parts...)
}

// spec describes a synthetic dnstap message.
type spec struct {
	typ          dnstap.Message_Type
	proto        dnstap.SocketProtocol
	qaddr, raddr string
	qport, rport uint32
	qt, rt       time.Time
	qmsg, rmsg   []byte
	extra        []byte
	identity     []byte
}

func (s spec) marshal(t testing.TB) []byte {
	t.Helper()
	m := &dnstap.Message{Type: s.typ.Enum()}
	if s.proto != 0 {
		m.SocketProtocol = s.proto.Enum()
	}
	if s.qaddr != "" {
		a := netip.MustParseAddr(s.qaddr)
		fam := dnstap.SocketFamily_INET
		if a.Is6() {
			fam = dnstap.SocketFamily_INET6
		}
		m.SocketFamily = fam.Enum()
		m.QueryAddress = a.AsSlice()
		m.QueryPort = proto.Uint32(s.qport)
	}
	if s.raddr != "" {
		m.ResponseAddress = netip.MustParseAddr(s.raddr).AsSlice()
		m.ResponsePort = proto.Uint32(s.rport)
	}
	if !s.qt.IsZero() {
		m.QueryTimeSec = proto.Uint64(uint64(s.qt.Unix()))
		m.QueryTimeNsec = proto.Uint32(uint32(s.qt.Nanosecond()))
	}
	if !s.rt.IsZero() {
		m.ResponseTimeSec = proto.Uint64(uint64(s.rt.Unix()))
		m.ResponseTimeNsec = proto.Uint32(uint32(s.rt.Nanosecond()))
	}
	m.QueryMessage, m.ResponseMessage = s.qmsg, s.rmsg
	d := &dnstap.Dnstap{Type: dnstap.Dnstap_MESSAGE.Enum(), Message: m, Extra: s.extra, Identity: s.identity}
	b, err := proto.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func dnsQuery(t testing.TB, id uint16, name string, qtype uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func dnsReply(t testing.TB, query []byte, rcode int) []byte {
	t.Helper()
	q := new(dns.Msg)
	if err := q.Unpack(query); err != nil {
		t.Fatal(err)
	}
	r := new(dns.Msg)
	r.SetRcode(q, rcode)
	b, err := r.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// headerOnly is a 12-byte response with QDCOUNT 0 (a FORMERR/NOTIMP answer
// to a malformed query).
func headerOnly(id uint16, rcode uint8) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	b = binary.BigEndian.AppendUint16(b, 1<<15|uint16(rcode))
	return append(b, 0, 0, 0, 0, 0, 0, 0, 0)
}

// messagesOf decodes a synthetic file and fails on any error.
func messagesOf(t testing.TB, payloads ...[]byte) []*Message {
	t.Helper()
	msgs, bad, final := decodeAll(fileOf(payloads...))
	if !errors.Is(final, io.EOF) || len(bad) > 0 {
		t.Fatalf("synthetic file: final %v, bad frames %v", final, bad)
	}
	return msgs
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
