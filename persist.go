package acmetls

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"
)

// DNSPersist validates every name by dns-persist-01 (the IETF draft
// "ACME dns-persist-01"): the customer sets, once, a TXT record that
// binds the name to this Manager's ACME account, and every issuance and
// renewal after that is validated by it. No DNS credentials are on the
// issuing path and nothing is written to DNS. [Manager.PersistRecord]
// says which record a name needs; it is checked, read-only, before each
// order, so that a missing or wrong record is refused with the reason
// and costs no failed validation at the CA.
type DNSPersist struct {
	// IssuerDomain is the CA's issuer domain name, as its dns-persist-01
	// challenges list it ("letsencrypt.org" for Let's Encrypt).
	IssuerDomain string
	// Resolvers are the DNS servers ("host:port") the records are read
	// from. Default: the system's resolver.
	Resolvers []string
	// ExpiryWarning is how long before a record's persistUntil an
	// EventPersistExpiring is sent, at the orders that read it. Default:
	// 30 days.
	ExpiryWarning time.Duration
}

// EventPersistExpiring: the dns-persist-01 record of ServerName stops
// authorizing issuance at NextAttempt (its persistUntil); the customer
// must renew it before, or issuance for the name fails.
const EventPersistExpiring EventKind = "persist_record_expiring"

// ErrPersistRecord is returned when a name's dns-persist-01 record is
// missing or does not authorize this Manager's account.
var ErrPersistRecord = errors.New("acmetls: dns-persist-01 record")

// PersistRecord returns the TXT record the owner of name must create for
// dns-persist-01: its name and its value, which binds it to this
// Manager's ACME account (registered now if there is none). For a
// wildcard name the record is on its parent, with policy=wildcard, and
// also covers the parent itself.
func (m *Manager) PersistRecord(ctx context.Context, name string) (recordName, value string, err error) {
	if err := m.init(); err != nil {
		return "", "", err
	}
	if m.DNSPersist == nil {
		return "", "", errors.New("acmetls: Manager.DNSPersist is not set")
	}
	name, err = normalizeIdentifier(name)
	if err != nil {
		return "", "", err
	}
	account, err := m.getAccount(ctx, m.issuers[0])
	if err != nil {
		return "", "", err
	}
	recordName, value = m.DNSPersist.record(name, account)
	return recordName, value, nil
}

// record returns the TXT record name needs for account: its name and
// value.
func (p *DNSPersist) record(name string, account *acme.Account) (recordName, value string) {
	base, wildcard := strings.CutPrefix(name, "*.")
	return "_validation-persist." + base, acme.Challenge{}.DNSPersist01TXTRecordValue(*account, p.IssuerDomain, wildcard)
}

// checkPersist reads name's dns-persist-01 record and says what is wrong
// with it, if anything, before an order is placed.
func (m *Manager) checkPersist(ctx context.Context, name string, account *acme.Account) error {
	p := m.DNSPersist
	wildcard := strings.HasPrefix(name, "*.")
	record, want := p.record(name, account)
	txts, err := p.lookupTXT(ctx, record)
	if err != nil {
		return fmt.Errorf("%w for %q: reading %s: %v", ErrPersistRecord, name, record, err)
	}
	var why []string
	for _, txt := range txts {
		issuer, params, _ := strings.Cut(txt, ";")
		if strings.TrimSpace(issuer) != p.IssuerDomain {
			continue
		}
		var accountURI, policy string
		var until time.Time
		for _, param := range strings.Split(params, ";") {
			tag, val, _ := strings.Cut(strings.TrimSpace(param), "=")
			switch strings.ToLower(strings.TrimSpace(tag)) {
			case "accounturi":
				accountURI = strings.TrimSpace(val)
			case "policy":
				policy = strings.ToLower(strings.TrimSpace(val))
			case "persistuntil":
				if n, err := strconv.ParseInt(strings.TrimSpace(val), 10, 64); err == nil {
					until = time.Unix(n, 0)
				}
			}
		}
		now := m.now()
		switch {
		case accountURI != account.Location:
			why = append(why, fmt.Sprintf("a record names account %q, not this Manager's %q", accountURI, account.Location))
		case wildcard && policy != "wildcard":
			why = append(why, "a record lacks policy=wildcard, which a wildcard needs")
		case !until.IsZero() && !now.Before(until):
			why = append(why, fmt.Sprintf("a record's persistUntil passed at %s", until.UTC().Format(time.RFC3339)))
		default:
			if !until.IsZero() && until.Sub(now) < p.expiryWarning() {
				m.emit(Event{Kind: EventPersistExpiring, ServerName: name, NextAttempt: until,
					Err: fmt.Errorf("the dns-persist-01 record %s stops authorizing issuance at %s", record, until.UTC().Format(time.RFC3339))})
			}
			return nil
		}
	}
	if len(why) == 0 {
		why = append(why, fmt.Sprintf("no TXT record for issuer %q", p.IssuerDomain))
	}
	return fmt.Errorf("%w for %q at %s: %s; the record to set: %s TXT %q", ErrPersistRecord, name, record,
		strings.Join(why, "; "), record, want)
}

func (p *DNSPersist) expiryWarning() time.Duration {
	if p.ExpiryWarning > 0 {
		return p.ExpiryWarning
	}
	return 30 * 24 * time.Hour
}

// lookupTXT reads the TXT records of name, from Resolvers or the system.
func (p *DNSPersist) lookupTXT(ctx context.Context, name string) ([]string, error) {
	if len(p.Resolvers) == 0 {
		txts, err := net.DefaultResolver.LookupTXT(ctx, name)
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return nil, nil
		}
		return txts, err
	}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	var lastErr error
	for _, r := range p.Resolvers {
		c := &dns.Client{Net: "tcp", Timeout: 10 * time.Second}
		in, _, err := c.ExchangeContext(ctx, q, r)
		if err != nil {
			lastErr = err
			continue
		}
		var txts []string
		for _, rr := range in.Answer {
			if t, ok := rr.(*dns.TXT); ok {
				txts = append(txts, strings.Join(t.Txt, ""))
			}
		}
		return txts, nil
	}
	return nil, lastErr
}

// persistSolver answers dns-persist-01 challenges: the record is the
// customer's, so there is nothing to present or clean up.
type persistSolver struct{}

func (persistSolver) Present(context.Context, acme.Challenge) error { return nil }
func (persistSolver) CleanUp(context.Context, acme.Challenge) error { return nil }

var _ acmez.Solver = persistSolver{}
