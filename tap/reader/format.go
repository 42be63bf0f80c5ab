package reader

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/miekg/dns"

	"github.com/tapproxy/tapproxy/annotate"
	"github.com/tapproxy/tapproxy/internal/dnswire"
)

// Format is an output format of the read command.
type Format uint8

// Output formats.
const (
	// Text is dig-like: a ";;" header block per message, then the DNS
	// message as miekg/dns prints it (or a hex dump when it does not
	// unpack).
	Text Format = iota
	// JSON is one JSON object per line (for jq).
	JSON
	// YAML is one YAML document per message, each starting with "---".
	YAML
)

// ParseFormat reads "text", "json" or "yaml".
func ParseFormat(s string) (Format, error) {
	switch s {
	case "text":
		return Text, nil
	case "json":
		return JSON, nil
	case "yaml":
		return YAML, nil
	}
	return 0, fmt.Errorf("unknown format %q (want text, json or yaml)", s)
}

func (f Format) String() string {
	switch f {
	case Text:
		return "text"
	case JSON:
		return "json"
	case YAML:
		return "yaml"
	}
	return "unknown"
}

// TimeLayout is RFC 3339 with all nine digits of nanoseconds, in UTC.
const TimeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// Printer writes messages and pairs in one Format. Each call makes a single
// Write, so a Printer shared under a lock never interleaves records.
type Printer struct {
	w   io.Writer
	f   Format
	buf bytes.Buffer
}

// NewPrinter returns a Printer writing f to w.
func NewPrinter(w io.Writer, f Format) *Printer { return &Printer{w: w, f: f} }

// Message writes one message.
func (p *Printer) Message(m *Message) error {
	p.buf.Reset()
	switch p.f {
	case Text:
		writeTextMessage(&p.buf, m)
	default:
		p.writeTree(messageTree(m))
	}
	return p.flush()
}

// Pairs writes the result of Match: the pairs, then the unmatched queries,
// the unmatched responses and a summary.
func (p *Printer) Pairs(pairs []Pair, uq, ur []*Message) error {
	for _, pr := range pairs {
		p.buf.Reset()
		if p.f == Text {
			fmt.Fprintf(&p.buf, "PAIR rule=%s latency=%s\n", pr.Rule, latencyText(pr))
			writeSummaryLine(&p.buf, "Q", pr.Query, false)
			writeSummaryLine(&p.buf, "R", pr.Response, true)
		} else {
			var o object
			o.add("kind", "pair")
			o.add("rule", pr.Rule.String())
			if pr.LatencyKnown {
				o.add("latency_ns", int64(pr.Latency))
				o.add("latency", pr.Latency.String())
			}
			o.add("query", messageTree(pr.Query))
			o.add("response", messageTree(pr.Response))
			p.writeTree(o)
		}
		if err := p.flush(); err != nil {
			return err
		}
	}
	for _, u := range [...]struct {
		kind, text, tag string
		msgs            []*Message
	}{{"unmatched_query", "UNMATCHED QUERY", "Q", uq}, {"unmatched_response", "UNMATCHED RESPONSE", "R", ur}} {
		for _, m := range u.msgs {
			p.buf.Reset()
			if p.f == Text {
				p.buf.WriteString(u.text + "\n")
				writeSummaryLine(&p.buf, u.tag, m, m.IsResponse())
			} else {
				var o object
				o.add("kind", u.kind)
				o.add("message", messageTree(m))
				p.writeTree(o)
			}
			if err := p.flush(); err != nil {
				return err
			}
		}
	}
	p.buf.Reset()
	if p.f == Text {
		fmt.Fprintf(&p.buf, ";; %d pairs, %d unmatched queries, %d unmatched responses\n", len(pairs), len(uq), len(ur))
	} else {
		var o object
		o.add("kind", "summary")
		o.add("pairs", len(pairs))
		o.add("unmatched_queries", len(uq))
		o.add("unmatched_responses", len(ur))
		p.writeTree(o)
	}
	return p.flush()
}

func (p *Printer) writeTree(o object) {
	if p.f == JSON {
		writeJSON(&p.buf, o)
		p.buf.WriteByte('\n')
		return
	}
	p.buf.WriteString("---\n")
	writeYAMLMap(&p.buf, o, 0, false)
}

func (p *Printer) flush() error {
	_, err := p.w.Write(p.buf.Bytes())
	return err
}

func latencyText(p Pair) string {
	if !p.LatencyKnown {
		return "unknown"
	}
	return p.Latency.String()
}

// ---------------------------------------------------------------- text

func writeTextMessage(b *bytes.Buffer, m *Message) {
	fmt.Fprintf(b, ";; frame %d: %s %s/%s %s -> %s\n", m.Frame, m.Type, m.FamilyName(), m.ProtocolName(),
		hostPort(m.QueryAddr, m.Tap.Message.QueryAddress, m.QueryPort),
		hostPort(m.ResponseAddr, m.Tap.Message.ResponseAddress, m.ResponsePort))
	if !m.QueryTime.IsZero() {
		b.WriteString(";; query_time: " + m.QueryTime.Format(TimeLayout) + "\n")
	}
	if !m.ResponseTime.IsZero() {
		b.WriteString(";; response_time: " + m.ResponseTime.Format(TimeLayout) + "\n")
	}
	if z := m.Tap.Message.QueryZone; z != nil {
		b.WriteString(";; query_zone: " + zoneName(z) + "\n")
	}
	if m.Tap.Identity != nil {
		b.WriteString(";; identity: " + strconv.Quote(string(m.Tap.Identity)) + "\n")
	}
	if m.Tap.Version != nil {
		b.WriteString(";; version: " + strconv.Quote(string(m.Tap.Version)) + "\n")
	}
	if m.Tap.Extra != nil {
		b.WriteString(";; extra: " + strconv.Quote(string(m.Tap.Extra)) + "\n")
	}
	if a := m.Annotation; a != nil {
		b.WriteString(";; annotation: " + annotationText(a) + "\n")
	}
	if m.AnnotationErr != nil {
		b.WriteString(";; annotation error: " + m.AnnotationErr.Error() + "\n")
	}
	for _, n := range m.Notes() {
		b.WriteString(";; note: " + n + "\n")
	}
	if m.QueryMsg != nil {
		writeTextDNS(b, "QUERY MESSAGE", m.QueryMsg)
	}
	if m.ResponseMsg != nil {
		writeTextDNS(b, "RESPONSE MESSAGE", m.ResponseMsg)
	}
	b.WriteByte('\n')
}

func writeTextDNS(b *bytes.Buffer, title string, d *DNS) {
	fmt.Fprintf(b, ";; %s (%d bytes):\n", title, len(d.Wire))
	if d.Msg != nil {
		s := d.Msg.String()
		b.WriteString(s)
		if !strings.HasSuffix(s, "\n") {
			b.WriteByte('\n')
		}
		return
	}
	b.WriteString(";; malformed: " + d.UnpackErr.Error() + "\n")
	if d.HasHeader {
		h := d.Header
		fmt.Fprintf(b, ";; opcode: %s, status: %s, id: %d\n", opcodeName(h.Opcode()), rcodeName(int(h.Rcode())), h.ID)
		fmt.Fprintf(b, ";; flags: %s; QUERY: %d, ANSWER: %d, AUTHORITY: %d, ADDITIONAL: %d\n",
			strings.Join(flagNames(h.Flags), " "), h.QDCount, h.ANCount, h.NSCount, h.ARCount)
	}
	if d.Question != nil {
		fmt.Fprintf(b, ";; first question: %s %s %s\n", questionName(d.Question), dns.Class(d.Question.Class), dns.Type(d.Question.Type))
	}
	for _, l := range strings.SplitAfter(hex.Dump(d.Wire), "\n") {
		if l != "" {
			b.WriteString(";; " + l)
		}
	}
}

// writeSummaryLine writes one line describing m for the pairs listing.
func writeSummaryLine(b *bytes.Buffer, tag string, m *Message, response bool) {
	d := m.QueryMsg
	t, tname := m.QueryTime, "qt"
	if response {
		d, t, tname = m.ResponseMsg, m.ResponseTime, "rt"
	}
	fmt.Fprintf(b, "  %s #%d %s %s %s -> %s", tag, m.Frame, m.Type, m.ProtocolName(),
		hostPort(m.QueryAddr, m.Tap.Message.QueryAddress, m.QueryPort),
		hostPort(m.ResponseAddr, m.Tap.Message.ResponseAddress, m.ResponsePort))
	switch {
	case d == nil:
		b.WriteString(" (no DNS message)")
	case !d.HasHeader:
		fmt.Fprintf(b, " MALFORMED(%d bytes)", len(d.Wire))
	default:
		fmt.Fprintf(b, " id=%d", d.Header.ID)
		if d.Question != nil {
			fmt.Fprintf(b, " %s %s %s", questionName(d.Question), dns.Class(d.Question.Class), dns.Type(d.Question.Type))
		} else {
			b.WriteString(" (no question)")
		}
		if response {
			b.WriteString(" " + rcodeName(int(d.Header.Rcode())))
		}
		if d.Header.TC() {
			b.WriteString(" TC")
		}
	}
	if !t.IsZero() {
		b.WriteString(" " + tname + "=" + t.Format(TimeLayout))
	}
	if m.Annotation != nil {
		fmt.Fprintf(b, " seq=%d", m.Annotation.Seq)
	}
	b.WriteByte('\n')
}

func annotationText(a *annotate.Annotation) string {
	var s strings.Builder
	s.WriteString("seq=" + strconv.FormatUint(a.Seq, 10))
	if a.Upstream.IsValid() {
		s.WriteString(" up=" + a.Upstream.String())
	}
	for _, d := range annotationDurations(a) {
		if d.v >= 0 {
			s.WriteString(" " + d.key + "=" + time.Duration(d.v).String())
		}
	}
	if f := annotationFlags(a); len(f) > 0 {
		s.WriteString(" flags=" + strings.Join(f, ","))
	}
	return s.String()
}

type namedDuration struct {
	key string
	v   int64
}

func annotationDurations(a *annotate.Annotation) [5]namedDuration {
	return [5]namedDuration{{"qdelay", a.QueueDelay}, {"proxy", a.Proxy}, {"rtt", a.RTT}, {"uqdelay", a.UpstreamQueueDelay}, {"total", a.Total}}
}

func annotationFlags(a *annotate.Annotation) []string {
	var f []string
	for _, x := range [...]struct {
		on   bool
		name string
	}{{a.Malformed, annotate.FlagMalformed}, {a.Timeout, annotate.FlagTimeout}, {a.Servfail, annotate.FlagServfail}, {a.Refused, annotate.FlagRefused}, {a.Truncated, annotate.FlagTruncated}} {
		if x.on {
			f = append(f, x.name)
		}
	}
	return f
}

// hostPort formats an address and port; raw is shown in hex when it is
// neither 4 nor 16 bytes.
func hostPort(a netip.Addr, raw []byte, port int64) string {
	var h string
	switch {
	case a.IsValid():
		h = a.String()
		if a.Is6() {
			h = "[" + h + "]"
		}
	case raw != nil:
		h = "0x" + hex.EncodeToString(raw)
	default:
		h = "-"
	}
	if port >= 0 {
		h += ":" + strconv.FormatInt(port, 10)
	}
	return h
}

func zoneName(wire []byte) string {
	if s, _, err := dns.UnpackDomainName(wire, 0); err == nil {
		return s
	}
	return "0x" + hex.EncodeToString(wire)
}

func questionName(q *dnswire.Question) string {
	if s, _, err := dns.UnpackDomainName(q.NameBytes(), 0); err == nil {
		return s
	}
	return "0x" + hex.EncodeToString(q.NameBytes())
}

func opcodeName(op uint8) string {
	if s, ok := dns.OpcodeToString[int(op)]; ok {
		return s
	}
	return "OPCODE" + strconv.Itoa(int(op))
}

func rcodeName(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(rc)
}

// flagNames lists the header flag bits that are set (RFC 1035 §4.1.1,
// RFC 4035 §3.2 for AD and CD).
func flagNames(f uint16) []string {
	var n []string
	for _, x := range [...]struct {
		bit  uint16
		name string
	}{{1 << 15, "qr"}, {1 << 10, "aa"}, {1 << 9, "tc"}, {1 << 8, "rd"}, {1 << 7, "ra"}, {1 << 6, "z"}, {1 << 5, "ad"}, {1 << 4, "cd"}} {
		if f&x.bit != 0 {
			n = append(n, x.name)
		}
	}
	return n
}

// ---------------------------------------------------------------- tree

// object is an ordered mapping rendered as JSON or YAML. Values are string,
// int, int64, uint64, uint16, bool, object or []any.
type object []field

type field struct {
	key string
	val any
}

func (o *object) add(k string, v any) { *o = append(*o, field{k, v}) }

// addBytes adds b as a string when it is valid UTF-8, else as base64 under
// key+"_base64", so nothing is lost to replacement characters.
func (o *object) addBytes(k string, b []byte) {
	if utf8.Valid(b) {
		o.add(k, string(b))
		return
	}
	o.add(k+"_base64", base64.StdEncoding.EncodeToString(b))
}

func messageTree(m *Message) object {
	var o object
	mm := m.Tap.Message
	o.add("frame", m.Frame)
	o.add("type", m.Type.String())
	if m.Family != 0 {
		o.add("socket_family", m.FamilyName())
	}
	if m.Protocol != 0 {
		o.add("socket_protocol", m.ProtocolName())
	}
	addAddr(&o, "query_address", m.QueryAddr, mm.QueryAddress)
	if m.QueryPort >= 0 {
		o.add("query_port", m.QueryPort)
	}
	addAddr(&o, "response_address", m.ResponseAddr, mm.ResponseAddress)
	if m.ResponsePort >= 0 {
		o.add("response_port", m.ResponsePort)
	}
	if !m.QueryTime.IsZero() {
		o.add("query_time", m.QueryTime.Format(TimeLayout))
	}
	if !m.ResponseTime.IsZero() {
		o.add("response_time", m.ResponseTime.Format(TimeLayout))
	}
	if mm.QueryZone != nil {
		o.add("query_zone", zoneName(mm.QueryZone))
	}
	if m.Tap.Identity != nil {
		o.addBytes("identity", m.Tap.Identity)
	}
	if m.Tap.Version != nil {
		o.addBytes("version", m.Tap.Version)
	}
	if m.Tap.Extra != nil {
		o.addBytes("extra", m.Tap.Extra)
	}
	if a := m.Annotation; a != nil {
		var ao object
		ao.add("seq", a.Seq)
		if a.Upstream.IsValid() {
			ao.add("up", a.Upstream.String())
		}
		for _, d := range annotationDurations(a) {
			if d.v >= 0 {
				ao.add(d.key+"_ns", d.v)
			}
		}
		if f := annotationFlags(a); len(f) > 0 {
			ao.add("flags", stringList(f))
		}
		o.add("annotation", ao)
	}
	if m.AnnotationErr != nil {
		o.add("annotation_error", m.AnnotationErr.Error())
	}
	if n := m.Notes(); len(n) > 0 {
		o.add("notes", stringList(n))
	}
	if m.QueryMsg != nil {
		o.add("query_message", dnsTree(m.QueryMsg))
	}
	if m.ResponseMsg != nil {
		o.add("response_message", dnsTree(m.ResponseMsg))
	}
	return o
}

func addAddr(o *object, k string, a netip.Addr, raw []byte) {
	switch {
	case a.IsValid():
		o.add(k, a.String())
	case raw != nil:
		o.add(k+"_hex", hex.EncodeToString(raw))
	}
}

func dnsTree(d *DNS) object {
	var o object
	o.add("size", len(d.Wire))
	if d.HasHeader {
		h := d.Header
		o.add("id", h.ID)
		rc := int(h.Rcode())
		if d.Msg != nil {
			rc = d.Msg.Rcode // includes the EDNS extended bits (RFC 6891 §6.1.3)
		}
		o.add("opcode", opcodeName(h.Opcode()))
		o.add("rcode", rcodeName(rc))
		o.add("flags", stringList(flagNames(h.Flags)))
		o.add("qdcount", h.QDCount)
		o.add("ancount", h.ANCount)
		o.add("nscount", h.NSCount)
		o.add("arcount", h.ARCount)
	}
	var qs []any
	if d.Msg != nil {
		for _, q := range d.Msg.Question {
			qs = append(qs, questionTree(q.Name, q.Qtype, q.Qclass))
		}
	} else if d.Question != nil {
		qs = append(qs, questionTree(questionName(d.Question), d.Question.Type, d.Question.Class))
	}
	if qs != nil {
		o.add("question", qs)
	}
	if d.Msg != nil {
		for _, s := range [...]struct {
			key string
			rrs []dns.RR
		}{{"answer", d.Msg.Answer}, {"authority", d.Msg.Ns}, {"additional", d.Msg.Extra}} {
			var l []any
			for _, rr := range s.rrs {
				if rr.Header().Rrtype == dns.TypeOPT {
					continue // shown as "edns"
				}
				l = append(l, rr.String())
			}
			if l != nil {
				o.add(s.key, l)
			}
		}
		if opt := d.Msg.IsEdns0(); opt != nil {
			var e object
			e.add("version", int(opt.Version()))
			e.add("udp_size", int(opt.UDPSize()))
			e.add("do", opt.Do())
			o.add("edns", e)
		}
	}
	if d.UnpackErr != nil {
		o.add("malformed", d.UnpackErr.Error())
	}
	if d.QuestionErr != nil && !errors.Is(d.QuestionErr, dnswire.ErrNoQuestion) && !errors.Is(d.QuestionErr, dnswire.ErrShort) {
		o.add("question_error", d.QuestionErr.Error())
	}
	o.add("wire", base64.StdEncoding.EncodeToString(d.Wire))
	return o
}

func questionTree(name string, t, c uint16) object {
	var o object
	o.add("name", name)
	o.add("type", dns.Type(t).String())
	o.add("class", dns.Class(c).String())
	return o
}

func stringList(s []string) []any {
	l := make([]any, len(s))
	for i, v := range s {
		l[i] = v
	}
	return l
}

// ---------------------------------------------------------------- JSON

func writeJSON(b *bytes.Buffer, v any) {
	switch v := v.(type) {
	case object:
		b.WriteByte('{')
		for i, f := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSONString(b, f.key)
			b.WriteByte(':')
			writeJSON(b, f.val)
		}
		b.WriteByte('}')
	case []any:
		b.WriteByte('[')
		for i, x := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSON(b, x)
		}
		b.WriteByte(']')
	case string:
		writeJSONString(b, v)
	default:
		b.WriteString(scalarText(v))
	}
}

func writeJSONString(b *bytes.Buffer, s string) {
	// encoding/json never fails on a string; it escapes control
	// characters and replaces invalid UTF-8 (addBytes avoids the latter).
	j, _ := json.Marshal(s)
	b.Write(j)
}

// scalarText renders numbers and booleans, identically in JSON and YAML.
func scalarText(v any) string {
	switch v := v.(type) {
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	case uint64:
		return strconv.FormatUint(v, 10)
	case uint16:
		return strconv.FormatUint(uint64(v), 10)
	case bool:
		return strconv.FormatBool(v)
	}
	return "null" // not reached: the tree builders use only the types above
}

// ---------------------------------------------------------------- YAML

// writeYAMLMap writes o as a block mapping at indent. With firstInline the
// first key continues the current line (after "- ").
func writeYAMLMap(b *bytes.Buffer, o object, indent int, firstInline bool) {
	for i, f := range o {
		if i > 0 || !firstInline {
			b.WriteString(strings.Repeat(" ", indent))
		}
		b.WriteString(f.key + ":")
		writeYAMLValue(b, f.val, indent)
	}
}

// writeYAMLValue writes v after "key:" (or "-") at indent.
func writeYAMLValue(b *bytes.Buffer, v any, indent int) {
	switch v := v.(type) {
	case object:
		if len(v) == 0 {
			b.WriteString(" {}\n")
			return
		}
		b.WriteByte('\n')
		writeYAMLMap(b, v, indent+2, false)
	case []any:
		if len(v) == 0 {
			b.WriteString(" []\n")
			return
		}
		b.WriteByte('\n')
		for _, x := range v {
			b.WriteString(strings.Repeat(" ", indent+2) + "-")
			if o, ok := x.(object); ok && len(o) > 0 {
				b.WriteByte(' ')
				writeYAMLMap(b, o, indent+4, true)
				continue
			}
			writeYAMLValue(b, x, indent+2)
		}
	case string:
		b.WriteByte(' ')
		writeYAMLString(b, v)
		b.WriteByte('\n')
	default:
		b.WriteString(" " + scalarText(v) + "\n")
	}
}

// writeYAMLString writes s as a YAML double-quoted scalar (YAML 1.2
// §7.3.1). Everything outside printable ASCII is escaped, so the output is
// plain ASCII whatever the input.
func writeYAMLString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r >= 0x20 && r < 0x7f:
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x100:
			fmt.Fprintf(b, `\x%02x`, r)
		case r < 0x10000:
			fmt.Fprintf(b, `\u%04x`, r)
		default:
			fmt.Fprintf(b, `\U%08x`, r)
		}
	}
	b.WriteByte('"')
}
