package annotate

import (
	"hash/maphash"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"
)

// ZoneCache remembers zone cuts seen in answers, so the dnstap encoder can
// fill Message.query_zone (dnstap.proto field 11) with the closest enclosing
// zone of a query name without asking anyone.
//
// A name is learned as a zone apex when an answer carries, in its answer or
// authority section, an SOA or NS RRset owned by it (RFC 1034 §4.2.1: an
// SOA and an NS RRset sit at the top of every zone, and a referral's NS set
// names the child zone's apex, RFC 1034 §4.3.2). Only names that are the
// question name or one of its ancestors are learned ("in bailiwick" for the
// question): a CNAME target's negative-answer SOA, or anything else an
// answer carries about unrelated names, teaches nothing about this query's
// zone and could otherwise fill the cache with names no query asks about.
//
// What the cache does not know: DS queries belong to the parent zone (RFC
// 4035 §5.2) but Lookup returns the closest enclosing apex, which is the
// child's when the child apex is known; entries never expire (zone cuts
// move rarely, and the LRU bound replaces stale ones eventually).
//
// Learn and Lookup are safe for concurrent use. The cache is an LRU of
// Size entries (github.com/hashicorp/golang-lru/v2, one lock per shard),
// split into shards by name hash so that writers on several goroutines do
// not queue on one lock (see BenchmarkZoneLookupParallel).
type ZoneCache struct {
	seed   maphash.Seed
	shards []zoneShard
	mask   uint64

	// Learn's counters: Learn runs on one writer goroutine per logger.
	learned, renewed, outOfBailiwick, malformed atomic.Uint64
}

// zoneShard is one LRU and the Lookup counters of the names that hash to
// it, padded so that shards do not share a cache line: a counter shared by
// every Lookup would serialise parallel lookups as surely as one lock.
type zoneShard struct {
	c             *lru.Cache[uint64, []byte]
	lookups, hits atomic.Uint64
	_             [48]byte
}

// ZoneStats are the ZoneCache's counters. Each SOA or NS record (class IN)
// in the answer and authority sections of a parsed response counts once in
// Learned, Renewed or OutOfBailiwick; a response that does not parse counts
// once in Malformed (records before the damage still count). Lookups =
// Hits + misses.
type ZoneStats struct {
	Learned        uint64 // new zone apexes stored
	Renewed        uint64 // apexes seen again (already stored)
	OutOfBailiwick uint64 // SOA/NS owners that are not the question name or an ancestor: ignored
	Malformed      uint64 // Learn inputs that did not parse (ignored; counted once per call)
	Lookups        uint64
	Hits           uint64
	Entries        int // current number of stored apexes
}

// DefaultZoneCacheSize is the default number of zone apexes remembered.
const DefaultZoneCacheSize = 65536

// zoneShards is the number of LRU shards (a power of two).
const zoneShards = 16

// maxZoneRRs bounds the records Learn walks in the answer and authority
// sections together, so a hostile answer with thousands of records costs a
// bounded amount of work on the writer goroutine.
const maxZoneRRs = 256

// DNS types and class used by Learn (RFC 1035 §3.2.2, §3.2.4).
const (
	typeNS  = 2
	typeSOA = 6
	classIN = 1
)

// NewZoneCache returns a cache holding at most size zone apexes
// (DefaultZoneCacheSize when size <= 0).
func NewZoneCache(size int) *ZoneCache { return newZoneCache(size, zoneShards) }

func newZoneCache(size, shards int) *ZoneCache {
	if size <= 0 {
		size = DefaultZoneCacheSize
	}
	if shards < 1 || shards&(shards-1) != 0 {
		shards = zoneShards
	}
	per := (size + shards - 1) / shards
	z := &ZoneCache{seed: maphash.MakeSeed(), mask: uint64(shards - 1)}
	for i := 0; i < shards; i++ {
		c, err := lru.New[uint64, []byte](per)
		if err != nil { // only for per <= 0, excluded above
			panic(err)
		}
		z.shards = append(z.shards, zoneShard{c: c})
	}
	return z
}

// Stats returns a snapshot of the counters.
func (z *ZoneCache) Stats() ZoneStats {
	st := ZoneStats{Learned: z.learned.Load(), Renewed: z.renewed.Load(),
		OutOfBailiwick: z.outOfBailiwick.Load(), Malformed: z.malformed.Load()}
	for i := range z.shards {
		s := &z.shards[i]
		st.Entries += s.c.Len()
		st.Lookups += s.lookups.Load()
		st.Hits += s.hits.Load()
	}
	return st
}

// Lookup returns the closest enclosing zone apex known for qname, a name in
// uncompressed wire form (any letter case). The returned slice is the
// cache's own lower-cased copy: callers must not modify it. ok is false when
// no enclosing zone is known (not even the root, which is only known when an
// answer taught it) or when qname is not a valid wire name. Lookup does not
// allocate.
func (z *ZoneCache) Lookup(qname []byte) (zone []byte, ok bool) {
	var buf [maxNameLen]byte
	n, ok := canonicalName(qname, &buf)
	if !ok {
		z.shards[0].lookups.Add(1)
		return nil, false
	}
	name := buf[:n]
	// Walk from the full name up to the root: the first hit is the
	// closest enclosing apex.
	for off := 0; off < n; off += int(name[off]) + 1 {
		suffix := name[off:]
		h := maphash.Bytes(z.seed, suffix)
		s := &z.shards[h&z.mask]
		if off == 0 {
			s.lookups.Add(1)
		}
		if v, found := s.c.Get(h); found && string(v) == string(suffix) {
			s.hits.Add(1)
			return v, true
		}
		if name[off] == 0 {
			break
		}
	}
	return nil, false
}

// add stores name (lower-cased wire form) as a zone apex.
func (z *ZoneCache) add(name []byte) {
	h := maphash.Bytes(z.seed, name)
	s := &z.shards[h&z.mask]
	if v, found := s.c.Get(h); found && string(v) == string(name) {
		z.renewed.Add(1)
		return
	}
	// A 64-bit hash collision replaces the other name: it costs one
	// cache entry, never a wrong answer (Lookup compares the bytes).
	s.c.Add(h, append([]byte(nil), name...))
	z.learned.Add(1)
}

// Learn records the zone apexes that response (a DNS message as received
// from an upstream) reveals for its question name. Anything that does not
// parse is counted (Malformed) and ignored; Learn never fails and reads at
// most maxZoneRRs records. It allocates only when it stores a new apex.
func (z *ZoneCache) Learn(response []byte) {
	if !z.learn(response) {
		z.malformed.Add(1)
	}
}

func (z *ZoneCache) learn(msg []byte) bool {
	if len(msg) < 12 || msg[2]&0x80 == 0 { // header, QR=1 (RFC 1035 §4.1.1)
		return false
	}
	qd := int(be16(msg[4:]))
	rrs := int(be16(msg[6:])) + int(be16(msg[8:])) // answer + authority
	if qd == 0 {
		return true // nothing to attach a zone to (e.g. a header-only FORMERR)
	}
	var qname, owner [maxNameLen]byte
	qlen, off, ok := readName(msg, 12, &qname)
	if !ok || off+4 > len(msg) {
		return false
	}
	off += 4
	for i := 1; i < qd; i++ { // RFC 1035 allows QDCOUNT > 1; skip the rest
		if _, off, ok = readName(msg, off, &owner); !ok || off+4 > len(msg) {
			return false
		}
		off += 4
	}
	rrs = min(rrs, maxZoneRRs)
	for i := 0; i < rrs; i++ {
		var olen int
		olen, off, ok = readName(msg, off, &owner)
		if !ok || off+10 > len(msg) {
			return false
		}
		typ, class := be16(msg[off:]), be16(msg[off+2:])
		rdlen := int(be16(msg[off+8:]))
		off += 10 + rdlen
		if off > len(msg) {
			return false
		}
		if (typ != typeSOA && typ != typeNS) || class != classIN {
			continue
		}
		if !isSuffix(qname[:qlen], owner[:olen]) {
			z.outOfBailiwick.Add(1)
			continue
		}
		z.add(owner[:olen])
	}
	return true
}

// isSuffix reports whether anc is name or one of its ancestors, both in
// lower-cased uncompressed wire form: anc must equal name from a label
// boundary on.
func isSuffix(name, anc []byte) bool {
	for off := 0; off < len(name); off += int(name[off]) + 1 {
		if string(name[off:]) == string(anc) {
			return true
		}
		if name[off] == 0 {
			break
		}
	}
	return false
}

const maxNameLen = 255 // RFC 1035 §3.1, length octets and root label included

func be16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

// readName decodes the possibly compressed name at off into dst, folding
// ASCII letters to lower case, and returns its length, the offset just past
// it where it started, and whether it parsed. The caps are those of
// internal/dnswire: 255 octets, compression pointers strictly backwards
// (RFC 1035 §4.1.4), no extended label types.
func readName(msg []byte, off int, dst *[maxNameLen]byte) (n, end int, ok bool) {
	end = -1
	lowest := off
	for {
		if off >= len(msg) {
			return 0, 0, false
		}
		c := int(msg[off])
		switch c & 0xC0 {
		case 0x00:
			if c == 0 {
				if n+1 > maxNameLen {
					return 0, 0, false
				}
				dst[n] = 0
				n++
				if end < 0 {
					end = off + 1
				}
				return n, end, true
			}
			if off+1+c > len(msg) || n+1+c+1 > maxNameLen {
				return 0, 0, false
			}
			dst[n] = byte(c)
			for i, b := range msg[off+1 : off+1+c] {
				if 'A' <= b && b <= 'Z' {
					b += 'a' - 'A'
				}
				dst[n+1+i] = b
			}
			n += 1 + c
			off += 1 + c
		case 0xC0:
			if off+2 > len(msg) {
				return 0, 0, false
			}
			ptr := int(be16(msg[off:]) & 0x3FFF)
			if ptr >= lowest || ptr < 12 {
				return 0, 0, false
			}
			if end < 0 {
				end = off + 2
			}
			lowest = ptr // strictly decreasing: at most len(msg) jumps
			off = ptr
		default:
			return 0, 0, false
		}
	}
}

// canonicalName copies an uncompressed wire name into dst, lower-cased, and
// checks its structure (labels of 1–63 octets, ending in the root label,
// at most 255 octets in all).
func canonicalName(name []byte, dst *[maxNameLen]byte) (int, bool) {
	if len(name) == 0 || len(name) > maxNameLen {
		return 0, false
	}
	off := 0
	for {
		if off >= len(name) {
			return 0, false
		}
		c := int(name[off])
		if c == 0 {
			if off+1 != len(name) {
				return 0, false
			}
			break
		}
		if c > 63 || off+1+c >= len(name) {
			return 0, false
		}
		off += 1 + c
	}
	for i, b := range name {
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		dst[i] = b
	}
	return len(name), true
}
