package report

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/miekg/dns"
	"golang.org/x/net/html"

	"github.com/tapproxy/tapproxy/internal/testenv"
	"github.com/tapproxy/tapproxy/internal/txn"
	"github.com/tapproxy/tapproxy/tap"
	"github.com/tapproxy/tapproxy/tap/fstrm"
	"github.com/tapproxy/tapproxy/tap/reader"
)

// --- independent computations (straightforward code, not the package's) ---

func isClientLeg(t dnstap.Message_Type) bool {
	return t != 3 && t != 4 && t != 7 && t != 8 // RESOLVER_*, FORWARDER_*
}

// nearestRank is the ⌈p·n⌉-th smallest of sorted values.
func nearestRank(sorted []int64, p float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	k := int(math.Ceil(p * float64(len(sorted))))
	if k < 1 {
		k = 1
	}
	return sorted[k-1]
}

func wantDist(vals []int64) Dist {
	if len(vals) == 0 {
		return Dist{}
	}
	s := append([]int64(nil), vals...)
	slices.Sort(s)
	var sum int64
	for _, v := range s {
		sum += v
	}
	return Dist{N: len(s), Mean: int64(math.Round(float64(sum) / float64(len(s)))), P50: nearestRank(s, 0.5), P90: nearestRank(s, 0.9),
		P99: nearestRank(s, 0.99), P999: nearestRank(s, 0.999), Max: s[len(s)-1]}
}

// firstQuestionType reads QTYPE of the first question by walking plain
// labels; "-" for anything else.
func firstQuestionType(wire []byte) string {
	if len(wire) < 12 || int(wire[4])<<8|int(wire[5]) == 0 {
		return "-"
	}
	off := 12
	for {
		if off >= len(wire) {
			return "-"
		}
		l := int(wire[off])
		if l == 0 {
			off++
			break
		}
		if l > 63 {
			return "-"
		}
		off += 1 + l
	}
	if off+4 > len(wire) {
		return "-"
	}
	t := uint16(wire[off])<<8 | uint16(wire[off+1])
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return fmt.Sprintf("TYPE%d", t)
}

func headerRcode(d *reader.DNS) string {
	if d == nil || len(d.Wire) < 12 {
		return "-"
	}
	rc := int(d.Wire[3] & 0x0F)
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", rc)
}

func countsOf(m map[string]int) []Count {
	var out []Count
	for k, n := range m {
		out = append(out, Count{k, n})
	}
	slices.SortFunc(out, func(a, b Count) int {
		if a.N != b.N {
			return b.N - a.N
		}
		return strings.Compare(a.Key, b.Key)
	})
	return out
}

func decodeAll(t *testing.T, path string) []*reader.Message {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := reader.NewDecoder(f, 0)
	var msgs []*reader.Message
	for {
		m, err := d.Next()
		if err == io.EOF {
			return msgs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		msgs = append(msgs, m)
	}
}

func groupByKey(gs []Group) map[string]Group {
	m := map[string]Group{}
	for _, g := range gs {
		m[g.Key] = g
	}
	return m
}

// TestCorpus: on every real producer's file, the report's figures equal
// those computed here from the decoded messages and reader.Match's pairs.
func TestCorpus(t *testing.T) {
	dir := testenv.DnstapCorpus(t)
	files, err := filepath.Glob(filepath.Join(dir, "*.fstrm"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no .fstrm files in %s (%v)", dir, err)
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			rep, err := Read(f, Options{Top: 1000})
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			msgs := decodeAll(t, path)
			pairs, uq, ur := reader.Match(msgs)

			var queries, answered, unanswered, orphans, responses, upQueries int
			var lat []int64
			rcodes, names, clients, qtypes := map[string]int{}, map[string]int{}, map[string]int{}, map[string]int{}
			qtypeAnswered := map[string]int{}
			addQuery := func(m *reader.Message) string {
				queries++
				qt := "-"
				if m.QueryMsg != nil {
					qt = firstQuestionType(m.QueryMsg.Wire)
				}
				qtypes[qt]++
				name := "-"
				if m.QueryMsg != nil && m.QueryMsg.Msg != nil && len(m.QueryMsg.Msg.Question) > 0 && qt != "-" {
					name = strings.ToLower(m.QueryMsg.Msg.Question[0].Name)
				}
				names[name]++
				c := "-"
				if m.QueryAddr.IsValid() {
					c = m.QueryAddr.String()
				}
				clients[c]++
				return qt
			}
			for _, m := range msgs {
				switch {
				case m.IsQuery() && isClientLeg(m.Type):
					addQuery(m)
				case m.IsQuery():
					upQueries++
				case m.IsResponse() && isClientLeg(m.Type):
					responses++
					rcodes[headerRcode(m.ResponseMsg)]++
				}
			}
			upLat := map[string][]int64{}
			for _, p := range pairs {
				if !isClientLeg(p.Query.Type) {
					k := netip.AddrPortFrom(p.Query.ResponseAddr, uint16(p.Query.ResponsePort)).String()
					if p.LatencyKnown {
						upLat[k] = append(upLat[k], int64(p.Latency))
					}
					continue
				}
				qt := "-"
				if p.Rule == reader.SelfContained {
					qt = addQuery(p.Query)
				} else if p.Query.QueryMsg != nil {
					qt = firstQuestionType(p.Query.QueryMsg.Wire)
				}
				answered++
				qtypeAnswered[qt]++
				if p.LatencyKnown {
					lat = append(lat, int64(p.Latency))
				}
			}
			for _, m := range uq {
				if isClientLeg(m.Type) {
					unanswered++
				}
			}
			for _, m := range ur {
				if m.IsResponse() && isClientLeg(m.Type) {
					orphans++
				}
			}
			if queries != answered+unanswered {
				t.Errorf("independent count: queries %d != answered %d + unanswered %d", queries, answered, unanswered)
			}
			for _, c := range []struct {
				name      string
				got, want int
			}{
				{"messages", rep.Messages, len(msgs)},
				{"queries", rep.Queries, queries},
				{"answered", rep.Answered, answered},
				{"unanswered", rep.Unanswered, unanswered},
				{"responses", rep.Responses, responses},
				{"responses without query", rep.Orphans, orphans},
				{"upstream queries", rep.UpstreamQueries, upQueries},
				{"timeout marked", rep.TimeoutMarked, 0},
			} {
				if c.got != c.want {
					t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
				}
			}
			if want := wantDist(lat); rep.Latency != want {
				t.Errorf("latency = %+v, want %+v", rep.Latency, want)
			}
			for i, lim := range []float64{1e6, 10e6, 100e6} {
				n := 0
				for _, l := range lat {
					if float64(l) <= lim {
						n++
					}
				}
				if rep.Within[i].N != n {
					t.Errorf("within %gms = %d, want %d", lim/1e6, rep.Within[i].N, n)
				}
			}
			var histN int
			for _, b := range rep.Histogram {
				histN += b.N
			}
			if histN != len(lat) {
				t.Errorf("histogram holds %d latencies, want %d", histN, len(lat))
			}
			if got, want := rep.Rcodes, countsOf(rcodes); !slices.Equal(got, want) {
				t.Errorf("rcodes = %v, want %v", got, want)
			}
			if got, want := rep.TopNames, countsOf(names); !slices.Equal(got, want) {
				t.Errorf("names = %v, want %v", got, want)
			}
			if got, want := rep.TopClients, countsOf(clients); !slices.Equal(got, want) {
				t.Errorf("clients = %v, want %v", got, want)
			}
			byQt := groupByKey(rep.PerQtype)
			if len(byQt) != len(qtypes) {
				t.Errorf("%d qtype groups, want %d (%v)", len(byQt), len(qtypes), qtypes)
			}
			for qt, n := range qtypes {
				if g := byQt[qt]; g.Queries != n || g.Answered != qtypeAnswered[qt] {
					t.Errorf("qtype %s: queries %d answered %d, want %d %d", qt, g.Queries, g.Answered, n, qtypeAnswered[qt])
				}
			}
			byUp := groupByKey(rep.PerUpstream)
			for k, ls := range upLat {
				if got, want := byUp[k].Latency, wantDist(ls); got != want {
					t.Errorf("upstream %s latency = %+v, want %+v", k, got, want)
				}
			}
			var qpsQ, qpsA int
			for _, p := range rep.QPS {
				qpsQ += p.Queries
				qpsA += p.Answered
			}
			// Every query in the corpus carries a query_time.
			if qpsQ != queries || qpsA != answered {
				t.Errorf("qps series sums to %d queries %d answered, want %d %d", qpsQ, qpsA, queries, answered)
			}
			if rep.Breakdown != nil {
				t.Errorf("breakdown present in a file without tapproxy annotations")
			}
			var out bytes.Buffer
			if err := rep.WriteText(&out); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out.String(), fmt.Sprintf("client queries %d, answered %d", queries, answered)) {
				t.Errorf("text report lacks the query line:\n%s", out.String())
			}
			out.Reset()
			if err := rep.WriteHTML(&out); err != nil {
				t.Fatal(err)
			}
			checkHTML(t, out.Bytes())
		})
	}
}

// --- a tapproxy file with known content ---

var (
	t0       = time.Unix(1_700_000_000, 0)
	local    = netip.MustParseAddrPort("127.0.0.1:53")
	upA      = netip.MustParseAddrPort("127.0.0.2:53")
	upB      = netip.MustParseAddrPort("127.0.0.3:53")
	us       = int64(time.Microsecond)
	ms       = int64(time.Millisecond)
	nAnswer  = 100
	nTimeout = 5
	nRefused = 3
)

func mkQuery(t *testing.T, id uint16, name string, qtype uint16) []byte {
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

func mkReply(q []byte, rcode int) []byte {
	r := append([]byte(nil), q...)
	r[2] |= 0x80
	r[3] = r[3]&0xF0 | byte(rcode)
	return r
}

// knownTransactions: answered i = 0..99 (total = (i+1)·1001 µs + 15 µs,
// rtt (i+1) ms, qdelay (i+1) µs), 5 timeouts, 3 ACL refusals.
func knownTransactions(t *testing.T) []*txn.Transaction {
	var out []*txn.Transaction
	base := t0.UnixNano()
	seq := uint64(0)
	for i := 0; i < nAnswer; i++ {
		seq++
		qt := dns.TypeA
		if i%4 == 3 {
			qt = dns.TypeAAAA
		}
		q := mkQuery(t, uint16(i), fmt.Sprintf("n%d.example.", i%5), qt)
		rc := dns.RcodeSuccess
		if i%10 == 0 {
			rc = dns.RcodeNameError
		}
		up := upA
		if i%2 == 1 {
			up = upB
		}
		x := &txn.Transaction{Seq: seq, Outcome: txn.Answered, Local: local, Upstream: up,
			Client:        netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(10 + i%3)}), uint16(40000+i)),
			UpstreamLocal: netip.MustParseAddrPort("127.0.0.1:33333"), UpstreamID: uint16(1000 + i),
			Query: q, Response: mkReply(q, rc)}
		x.QueryKernel = base + int64(i)*20*ms
		x.QueryRead = x.QueryKernel + int64(i+1)*us
		x.UpstreamSent = x.QueryRead + 10*us
		x.ResponseKernel = x.UpstreamSent + int64(i+1)*ms
		x.ResponseRead = x.ResponseKernel + 2*us
		x.ReplySent = x.ResponseRead + 3*us
		out = append(out, x)
	}
	for j := 0; j < nTimeout; j++ {
		seq++
		up := upA
		if j%2 == 1 {
			up = upB
		}
		x := &txn.Transaction{Seq: seq, Outcome: txn.TimedOut, Local: local, Upstream: up,
			Client: netip.MustParseAddrPort("127.0.0.20:5000"), UpstreamLocal: netip.MustParseAddrPort("127.0.0.1:33333"),
			Query: mkQuery(t, uint16(500+j), "slow.example.", dns.TypeA)}
		x.QueryKernel = base + 2*int64(time.Second) + int64(j)*10*ms
		x.QueryRead = x.QueryKernel + us
		x.UpstreamSent = x.QueryRead + us
		out = append(out, x)
	}
	for k := 0; k < nRefused; k++ {
		seq++
		q := mkQuery(t, uint16(600+k), "x.example.", dns.TypeA)
		x := &txn.Transaction{Seq: seq, Outcome: txn.Refused, Local: local,
			Client: netip.MustParseAddrPort("127.0.0.30:6000"), Query: q, Response: mkReply(q[:12+len("x.example.")+1+4], dns.RcodeRefused)}
		x.QueryKernel = base + 2500*ms + int64(k)*ms
		x.QueryRead = x.QueryKernel + us
		x.ReplySent = x.QueryRead + 3*us
		out = append(out, x)
	}
	return out
}

// writeTapproxyFile encodes the transactions with tapproxy's encoder into
// a Frame Streams file, as the serve command does.
func writeTapproxyFile(t *testing.T, txs []*txn.Transaction, types tap.TypeSet) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tapproxy.fstrm")
	w, err := fstrm.NewFileWriter(fstrm.FileOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	enc := tap.NewEncoder(tap.EncoderOptions{Identity: []byte("test-host"), Version: []byte("tapproxy test"), Types: types})
	var buf []byte
	var ends []int
	for _, x := range txs {
		buf, ends = enc.EncodeTransaction(buf[:0], ends[:0], x)
		start := 0
		for _, e := range ends {
			if err := w.WriteFrame(buf[start:e]); err != nil {
				t.Fatal(err)
			}
			start = e
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestTapproxyKnownContent(t *testing.T) {
	for _, types := range []tap.TypeSet{tap.DefaultTypes, tap.TypesAll} {
		t.Run(types.String(), func(t *testing.T) {
			path := writeTapproxyFile(t, knownTransactions(t), types)
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			rep, err := Read(f, Options{})
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			// Expected values, from the generation rules.
			var total, rtt, queue, rttA, rttB []int64
			for i := 0; i < nAnswer; i++ {
				total = append(total, int64(i+1)*1001*us+15*us)
				rtt = append(rtt, int64(i+1)*ms)
				queue = append(queue, int64(i+1)*us)
				if i%2 == 0 {
					rttA = append(rttA, int64(i+1)*ms)
				} else {
					rttB = append(rttB, int64(i+1)*ms)
				}
			}
			for k := 0; k < nRefused; k++ {
				total = append(total, 4*us)
			}
			for k := 0; k < nTimeout+nRefused; k++ {
				queue = append(queue, us)
			}
			answered := nAnswer + nRefused
			queries := answered + nTimeout
			for _, c := range []struct {
				name      string
				got, want int
			}{
				{"queries", rep.Queries, queries},
				{"answered", rep.Answered, answered},
				{"unanswered", rep.Unanswered, nTimeout},
				{"timeout marked", rep.TimeoutMarked, nTimeout},
				{"responses", rep.Responses, answered},
				{"orphans", rep.Orphans, 0},
				{"upstream orphans", rep.UpstreamOrphans, 0},
			} {
				if c.got != c.want {
					t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
				}
			}
			if types == tap.TypesAll && rep.UpstreamQueries != nAnswer+nTimeout {
				t.Errorf("upstream queries = %d, want %d", rep.UpstreamQueries, nAnswer+nTimeout)
			}
			if want := wantDist(total); rep.Latency != want {
				t.Errorf("latency = %+v\nwant      %+v", rep.Latency, want)
			}
			// By hand: p50 is the 52nd of 103 (3 refusals first, then
			// i = 48): 49·1001 + 15 µs.
			if rep.Latency.P50 != (49*1001+15)*us || rep.Latency.Max != (100*1001+15)*us {
				t.Errorf("p50 %d max %d, want %d %d", rep.Latency.P50, rep.Latency.Max, (49*1001+15)*us, (100*1001+15)*us)
			}
			for i, want := range []int{3, 3 + 9, 3 + 99} {
				if rep.Within[i].N != want {
					t.Errorf("within %g ms = %d, want %d", rep.Within[i].MaxMS, rep.Within[i].N, want)
				}
			}
			bd := rep.Breakdown
			if bd == nil {
				t.Fatal("no breakdown for a tapproxy file")
			}
			if bd.Transactions != queries {
				t.Errorf("breakdown transactions = %d, want %d", bd.Transactions, queries)
			}
			for _, c := range []struct {
				name      string
				got, want Dist
			}{
				{"queue", bd.Queue, wantDist(queue)},
				{"upstream", bd.Upstream, wantDist(rtt)},
				{"proxy", bd.Proxy, wantDist(slices.Repeat([]int64{15 * us}, nAnswer))},
				{"upstream queue", bd.UpstreamQueue, wantDist(slices.Repeat([]int64{2 * us}, nAnswer))},
				{"total", bd.Total, wantDist(total)},
			} {
				if c.got != c.want {
					t.Errorf("breakdown %s = %+v, want %+v", c.name, c.got, c.want)
				}
			}
			byUp := groupByKey(rep.PerUpstream)
			if len(byUp) != 2 {
				t.Errorf("per upstream: %v, want two", rep.PerUpstream)
			}
			for _, c := range []struct {
				up                                      netip.AddrPort
				queries, answered, unanswered, timeouts int
				lat                                     []int64
			}{
				{upA, 50 + 3, 50, 3, 3, rttA},
				{upB, 50 + 2, 50, 2, 2, rttB},
			} {
				g := byUp[c.up.String()]
				if g.Queries != c.queries || g.Answered != c.answered || g.Unanswered != c.unanswered || g.Timeouts != c.timeouts {
					t.Errorf("upstream %s: %+v, want queries %d answered %d unanswered %d timeouts %d", c.up, g, c.queries, c.answered, c.unanswered, c.timeouts)
				}
				if g.Latency != wantDist(c.lat) {
					t.Errorf("upstream %s latency %+v, want %+v", c.up, g.Latency, wantDist(c.lat))
				}
			}
			byQt := groupByKey(rep.PerQtype)
			if g := byQt["A"]; g.Queries != 75+nTimeout+nRefused || g.Answered != 75+nRefused || g.Timeouts != nTimeout {
				t.Errorf("qtype A: %+v", g)
			}
			if g := byQt["AAAA"]; g.Queries != 25 || g.Answered != 25 || g.Unanswered != 0 {
				t.Errorf("qtype AAAA: %+v", g)
			}
			if want := []Count{{"NOERROR", 90}, {"NXDOMAIN", 10}, {"REFUSED", nRefused}}; !slices.Equal(rep.Rcodes, want) {
				t.Errorf("rcodes %v, want %v", rep.Rcodes, want)
			}
			wantNames := []Count{{"n0.example.", 20}, {"n1.example.", 20}, {"n2.example.", 20}, {"n3.example.", 20}, {"n4.example.", 20}, {"slow.example.", 5}, {"x.example.", 3}}
			if !slices.Equal(rep.TopNames, wantNames) {
				t.Errorf("names %v, want %v", rep.TopNames, wantNames)
			}
			wantClients := []Count{{"127.0.0.10", 34}, {"127.0.0.11", 33}, {"127.0.0.12", 33}, {"127.0.0.20", 5}, {"127.0.0.30", 3}}
			if !slices.Equal(rep.TopClients, wantClients) {
				t.Errorf("clients %v, want %v", rep.TopClients, wantClients)
			}
			wantQPS := []Point{{float64(t0.Unix()), 50, 50}, {float64(t0.Unix() + 1), 50, 50}, {float64(t0.Unix() + 2), nTimeout + nRefused, nRefused}}
			if !slices.Equal(rep.QPS, wantQPS) || rep.Bucket != 1 {
				t.Errorf("qps %v (bucket %g), want %v", rep.QPS, rep.Bucket, wantQPS)
			}
			// Breakdown over time: bucket 0 holds i = 0..49.
			if len(rep.BreakdownOverTime) != 2 {
				t.Fatalf("breakdown over time: %v", rep.BreakdownOverTime)
			}
			b0 := rep.BreakdownOverTime[0]
			if b0.N != 50 || b0.Queue != (1+50)*us/2 || b0.Proxy != 15*us || b0.Upstream != (1+50)*ms/2 {
				t.Errorf("bucket 0 breakdown %+v", b0)
			}
			var out bytes.Buffer
			if err := rep.WriteHTML(&out); err != nil {
				t.Fatal(err)
			}
			checkHTML(t, out.Bytes())
			if n := strings.Count(out.String(), "<svg"); n != 5 {
				t.Errorf("HTML has %d plots, want 5 (histogram, over time, qps, breakdown bars, breakdown over time)", n)
			}
			out.Reset()
			if err := rep.WriteText(&out); err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"breakdown of tapproxy transactions", "per upstream", "127.0.0.2:53", "≤ 1ms 2.9% (3)"} {
				if !strings.Contains(out.String(), s) {
					t.Errorf("text report lacks %q:\n%s", s, out.String())
				}
			}
		})
	}
}

// checkHTML parses the report and refuses anything that would load from
// elsewhere or run code.
func checkHTML(t *testing.T, b []byte) {
	t.Helper()
	if _, err := html.Parse(bytes.NewReader(b)); err != nil {
		t.Fatalf("HTML does not parse: %v", err)
	}
	low := strings.ToLower(string(b))
	for _, bad := range []string{"<script", "src=", "href=", "url(", "@import", "http://", "https://"} {
		if strings.Contains(low, bad) {
			t.Errorf("HTML report contains %q: it must be self-contained and inert", bad)
		}
	}
}

func TestDamagedFile(t *testing.T) {
	neg := filepath.Join(testenv.DnstapCorpus(t), "negative")
	for _, c := range []struct {
		file      string
		exit      int
		wantMsgs  bool
		badFrames int
	}{
		{"truncated-mid-frame.fstrm", reader.ExitTruncated, true, 0},
		{"no-stop-frame.fstrm", reader.ExitTruncated, true, 0},
		{"garbage-data-frame.fstrm", reader.ExitBadFrame, true, 1},
		{"empty.fstrm", reader.ExitNotFrameStream, false, 0},
		{"wrong-content-type.fstrm", reader.ExitNotFrameStream, false, 0},
	} {
		t.Run(c.file, func(t *testing.T) {
			f, err := os.Open(filepath.Join(neg, c.file))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			rep, err := Read(f, Options{})
			if got := reader.ExitCode(err); got != c.exit {
				t.Errorf("exit code %d (%v), want %d", got, err, c.exit)
			}
			if rep == nil {
				t.Fatal("nil report")
			}
			if (rep.Messages > 0) != c.wantMsgs || rep.BadFrames != c.badFrames || rep.Error == "" {
				t.Errorf("messages %d bad frames %d error %q", rep.Messages, rep.BadFrames, rep.Error)
			}
		})
	}
}

func TestAutoBucket(t *testing.T) {
	for _, c := range []struct {
		span, want time.Duration
	}{
		{0, time.Second}, {299 * time.Second, time.Second}, {300 * time.Second, 2 * time.Second},
		{time.Hour, 30 * time.Second}, {24 * time.Hour, 5 * time.Minute},
	} {
		if got := autoBucket(c.span); got != c.want {
			t.Errorf("autoBucket(%v) = %v, want %v", c.span, got, c.want)
		}
	}
}

// FuzzRead: any input yields a report or an error, never a panic, and the
// query accounting adds up. Each input decodes, pairs and renders text and
// HTML, so run it with a short minimization:
//
//	go test -run='^$' -fuzz=FuzzRead -fuzztime=30s -fuzzminimizetime=5s ./tap/report/
func FuzzRead(f *testing.F) {
	// Seeds: a small real file (645 bytes: short minimizations), the same
	// cut in half, and nothing.
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(testenv.ModuleRoot(f)), "shared", "testdata", "dnstap", "named-unix.fstrm")); err == nil {
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, _ := Read(bytes.NewReader(b), Options{})
		if rep.Queries != rep.Answered+rep.Unanswered {
			t.Fatalf("queries %d != answered %d + unanswered %d", rep.Queries, rep.Answered, rep.Unanswered)
		}
		var buf bytes.Buffer
		if err := rep.WriteText(&buf); err != nil {
			t.Fatal(err)
		}
		if err := rep.WriteHTML(&buf); err != nil {
			t.Fatal(err)
		}
	})
}

var _ = cmp.Compare[int]
