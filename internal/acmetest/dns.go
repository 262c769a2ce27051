package acmetest

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"

	"github.com/libdns/libdns"
	"github.com/miekg/dns"
)

// startDNS serves, over TCP as Pebble's VA asks and over UDP on the same
// port as resolvers ask first: A 127.0.0.1 for every name; an SOA for
// every name, so that every name is its own zone to a DNS-01 solver
// looking for one; and the TXT records set through DNSProvider.
func startDNS(txt *txtRecords) (*dns.Server, *dns.Server, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, "", fmt.Errorf("acmetest: dns listener: %w", err)
	}
	pc, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		ln.Close()
		return nil, nil, "", fmt.Errorf("acmetest: dns listener: %w", err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		for _, q := range req.Question {
			hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 0}
			switch q.Qtype {
			case dns.TypeA:
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(127, 0, 0, 1)})
			case dns.TypeSOA:
				m.Answer = append(m.Answer, &dns.SOA{Hdr: hdr, Ns: "ns.acmetest.", Mbox: "hostmaster.acmetest.", Serial: 1,
					Refresh: 60, Retry: 60, Expire: 60, Minttl: 0})
			case dns.TypeTXT:
				for _, v := range txt.get(q.Name) {
					m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{v}})
				}
			}
		}
		_ = w.WriteMsg(m)
	})
	started := make(chan struct{}, 2)
	tcp := &dns.Server{Listener: ln, Handler: mux, NotifyStartedFunc: func() { started <- struct{}{} }}
	udp := &dns.Server{PacketConn: pc, Handler: mux, NotifyStartedFunc: func() { started <- struct{}{} }}
	go func() { _ = tcp.ActivateAndServe() }()
	go func() { _ = udp.ActivateAndServe() }()
	<-started
	<-started
	return tcp, udp, ln.Addr().String(), nil
}

// txtRecords are the TXT records the DNS stub serves, by lower-case FQDN.
type txtRecords struct {
	mu     sync.Mutex // guards byName, writes and hidden
	byName map[string][]string
	writes int
	hidden bool
}

func (t *txtRecords) get(fqdn string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.hidden {
		return nil
	}
	return slices.Clone(t.byName[strings.ToLower(dns.Fqdn(fqdn))])
}

// HideTXT makes the DNS answer no TXT records while hide holds, as a DNS
// host that has not published them yet: dns-01 validations fail.
func (c *CA) HideTXT(hide bool) {
	c.txt.mu.Lock()
	c.txt.hidden = hide
	c.txt.mu.Unlock()
}

// StoredTXT returns every TXT record set through DNSProvider, hidden or
// not, by name.
func (c *CA) StoredTXT() map[string][]string {
	c.txt.mu.Lock()
	defer c.txt.mu.Unlock()
	out := make(map[string][]string, len(c.txt.byName))
	for k, v := range c.txt.byName {
		out[k] = slices.Clone(v)
	}
	return out
}

// TXT returns the TXT records the CA's DNS serves for name.
func (c *CA) TXT(name string) []string { return c.txt.get(name) }

// DNSWrites counts the records added and deleted through DNSProvider.
func (c *CA) DNSWrites() int {
	c.txt.mu.Lock()
	defer c.txt.mu.Unlock()
	return c.txt.writes
}

// DNSProvider returns a libdns provider that sets TXT records in the
// DNS the CA's validation asks, as a DNS host's API would.
func (c *CA) DNSProvider() *DNSProvider { return &DNSProvider{txt: &c.txt} }

// DNSProvider is a libdns provider writing to a CA's DNS stub.
type DNSProvider struct{ txt *txtRecords }

// AppendRecords adds TXT records.
func (p *DNSProvider) AppendRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	t := p.txt
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byName == nil {
		t.byName = make(map[string][]string)
	}
	for _, r := range recs {
		rr := r.RR()
		if rr.Type != "TXT" {
			return nil, fmt.Errorf("acmetest: only TXT records, not %s", rr.Type)
		}
		name := strings.ToLower(libdns.AbsoluteName(rr.Name, zone))
		t.byName[name] = append(t.byName[name], rr.Data)
		t.writes++
	}
	return recs, nil
}

// DeleteRecords removes TXT records.
func (p *DNSProvider) DeleteRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	t := p.txt
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range recs {
		rr := r.RR()
		name := strings.ToLower(libdns.AbsoluteName(rr.Name, zone))
		t.byName[name] = slices.DeleteFunc(t.byName[name], func(v string) bool { return v == rr.Data })
		if len(t.byName[name]) == 0 {
			delete(t.byName, name)
		}
		t.writes++
	}
	return recs, nil
}
