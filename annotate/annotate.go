package annotate

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"

	"github.com/tapproxy/tapproxy/internal/txn"
)

// Version is the prefix of every annotation this package writes. Readers
// must accept unknown keys (later minor additions) and reject other
// prefixes; a change that breaks that promise bumps the number.
const Version = "tapproxy/1"

// Flags in the annotation's "flags" key, comma-separated.
const (
	FlagMalformed = "malformed" // query's question did not parse; paired by ID and addresses
	FlagTimeout   = "timeout"   // no answer within the timeout: the dnstap timeout marker
	FlagServfail  = "servfail"  // tapproxy answered SERVFAIL itself after the timeout
	FlagRefused   = "refused"   // tapproxy answered REFUSED itself (ACL)
	FlagTruncated = "truncated" // the reply to the client had TC=1
)

// Annotation is what tapproxy learned about one transaction, carried in the
// dnstap "extra" field of every record of that transaction as
//
//	tapproxy/1 seq=42 up=127.0.0.1:53 qdelay=1234 proxy=80 rtt=56789 uqdelay=12 total=60000 flags=truncated
//
// Durations are integer nanoseconds. A key whose value is unknown is left
// out. Keys:
//   - seq: transaction sequence number, shared by all its records, unique in
//     the process (gaps or duplicates seen by a collector mean loss or
//     replay).
//   - up: the upstream address and port the query went to.
//   - qdelay: client-socket queue delay (kernel receive → worker read).
//   - proxy: time inside tapproxy (total − rtt − qdelay).
//   - rtt: upstream round trip (upstream send → kernel receive of the answer).
//   - uqdelay: upstream-socket queue delay (kernel receive → read).
//   - total: kernel receive of the query → reply handed to the client socket.
//   - flags: see the Flag constants.
type Annotation struct {
	Seq      uint64
	Upstream netip.AddrPort
	// Durations in nanoseconds; -1 means unknown.
	QueueDelay         int64
	Proxy              int64
	RTT                int64
	UpstreamQueueDelay int64
	Total              int64
	Malformed          bool
	Timeout            bool
	Servfail           bool
	Refused            bool
	Truncated          bool
}

// FromTransaction computes the annotation of t.
func FromTransaction(t *txn.Transaction) Annotation {
	a := Annotation{
		Seq:                t.Seq,
		Upstream:           t.Upstream,
		QueueDelay:         span(t.QueryKernel, t.QueryRead),
		RTT:                span(t.UpstreamSent, t.ResponseKernel),
		UpstreamQueueDelay: span(t.ResponseKernel, t.ResponseRead),
		Total:              span(t.QueryKernel, t.ReplySent),
		Proxy:              -1,
		Malformed:          t.Flags&txn.Malformed != 0,
		Truncated:          t.Flags&txn.Truncated != 0,
	}
	switch t.Outcome {
	case txn.TimedOut:
		a.Timeout = true
	case txn.TimedOutServfail:
		a.Timeout, a.Servfail = true, true
	case txn.Refused:
		a.Refused = true
	}
	if a.Total >= 0 && a.RTT >= 0 && a.QueueDelay >= 0 {
		a.Proxy = a.Total - a.RTT - a.QueueDelay
	}
	return a
}

// span returns b-a, or -1 when either is unknown or time ran backwards.
func span(a, b int64) int64 {
	if a == 0 || b == 0 || b < a {
		return -1
	}
	return b - a
}

// Append writes the annotation's text form to dst without allocating when
// dst has room.
func (a *Annotation) Append(dst []byte) []byte {
	dst = append(dst, Version...)
	dst = append(dst, " seq="...)
	dst = strconv.AppendUint(dst, a.Seq, 10)
	if a.Upstream.IsValid() {
		dst = append(dst, " up="...)
		dst = a.Upstream.AppendTo(dst)
	}
	dst = appendDur(dst, " qdelay=", a.QueueDelay)
	dst = appendDur(dst, " proxy=", a.Proxy)
	dst = appendDur(dst, " rtt=", a.RTT)
	dst = appendDur(dst, " uqdelay=", a.UpstreamQueueDelay)
	dst = appendDur(dst, " total=", a.Total)
	if a.Malformed || a.Timeout || a.Servfail || a.Refused || a.Truncated {
		dst = append(dst, " flags="...)
		first := true
		for _, f := range [...]struct {
			on   bool
			name string
		}{{a.Malformed, FlagMalformed}, {a.Timeout, FlagTimeout}, {a.Servfail, FlagServfail}, {a.Refused, FlagRefused}, {a.Truncated, FlagTruncated}} {
			if !f.on {
				continue
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = append(dst, f.name...)
		}
	}
	return dst
}

func appendDur(dst []byte, key string, v int64) []byte {
	if v < 0 {
		return dst
	}
	dst = append(dst, key...)
	return strconv.AppendInt(dst, v, 10)
}

// ErrNotAnnotation means the bytes do not start with a known version prefix
// (another producer's extra field, or a future incompatible version).
var ErrNotAnnotation = errors.New("annotate: not a tapproxy/1 annotation")

// Parse reads an annotation written by Append. Unknown keys are ignored.
func Parse(b []byte) (Annotation, error) {
	s := string(b)
	if s != Version && !strings.HasPrefix(s, Version+" ") {
		return Annotation{}, ErrNotAnnotation
	}
	a := Annotation{QueueDelay: -1, Proxy: -1, RTT: -1, UpstreamQueueDelay: -1, Total: -1}
	for _, f := range strings.Fields(s[len(Version):]) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Annotation{}, errors.New("annotate: field without '=': " + strconv.Quote(f))
		}
		var err error
		switch k {
		case "seq":
			a.Seq, err = strconv.ParseUint(v, 10, 64)
		case "up":
			a.Upstream, err = netip.ParseAddrPort(v)
		case "qdelay":
			a.QueueDelay, err = parseDur(v)
		case "proxy":
			a.Proxy, err = parseDur(v)
		case "rtt":
			a.RTT, err = parseDur(v)
		case "uqdelay":
			a.UpstreamQueueDelay, err = parseDur(v)
		case "total":
			a.Total, err = parseDur(v)
		case "flags":
			for _, fl := range strings.Split(v, ",") {
				switch fl {
				case FlagMalformed:
					a.Malformed = true
				case FlagTimeout:
					a.Timeout = true
				case FlagServfail:
					a.Servfail = true
				case FlagRefused:
					a.Refused = true
				case FlagTruncated:
					a.Truncated = true
				}
			}
		}
		if err != nil {
			return Annotation{}, errors.New("annotate: bad " + k + ": " + err.Error())
		}
	}
	return a, nil
}

func parseDur(v string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err == nil && n < 0 {
		return 0, errors.New("negative duration")
	}
	return n, err
}
