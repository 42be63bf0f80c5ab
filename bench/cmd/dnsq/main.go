// Command dnsq sends DNS queries to a loopback server and prints the
// answers dig-style. It exists so the README demo works on a machine
// without dig; tests use real dig/kdig.
//
//	dnsq [-tcp] 127.0.0.1:5300 NAME [TYPE] ...
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"
)

func main() {
	tcp := flag.Bool("tcp", false, "query over TCP")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: dnsq [-tcp] SERVER:PORT NAME [TYPE] [NAME [TYPE] ...]")
		flag.PrintDefaults()
	}
	flag.Parse()
	args := flag.Args()
	if len(args) < 2 {
		flag.Usage()
		os.Exit(2)
	}
	server, err := netip.ParseAddrPort(args[0])
	if err != nil || !server.Addr().IsLoopback() {
		fmt.Fprintln(os.Stderr, "dnsq: the server must be a loopback ADDR:PORT")
		os.Exit(2)
	}
	c := &dns.Client{Timeout: 3 * time.Second}
	if *tcp {
		c.Net = "tcp"
	}
	code := 0
	for rest := args[1:]; len(rest) > 0; {
		name, qtype := rest[0], dns.TypeA
		rest = rest[1:]
		if len(rest) > 0 {
			if t, ok := dns.StringToType[strings.ToUpper(rest[0])]; ok {
				qtype = t
				rest = rest[1:]
			}
		}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		r, rtt, err := c.Exchange(m, server.String())
		if err != nil {
			fmt.Printf(";; %s %s: %v\n", name, dns.TypeToString[qtype], err)
			code = 1
			continue
		}
		fmt.Printf(";; %s %s: %s in %v\n", name, dns.TypeToString[qtype], dns.RcodeToString[r.Rcode], rtt.Round(time.Microsecond))
		for _, rr := range r.Answer {
			fmt.Println(rr.String())
		}
	}
	os.Exit(code)
}
