package acmetls

import (
	"context"
	"crypto/tls"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/mholt/acmez/v3/acme"
	"github.com/prometheus/client_golang/prometheus"
)

// stats are the Manager's counters, read by its metrics. Handshakes are
// counted once a collector exists (on): an atomic add, on a stripe of its
// own for most concurrent handshakes, which a hit from memory otherwise
// does without.
type stats struct {
	on         atomic.Bool
	handshakes [handshakeSources]stripedCounter
	failures   [len(problemLabels)]atomic.Uint64
}

// count counts a handshake whose certificate came from source, once a
// collector exists.
func (s *stats) count(source int, hello *tls.ClientHelloInfo) {
	if s.on.Load() {
		s.handshakes[source].add(hello)
	}
}

// Where a handshake's certificate came from.
const (
	fromMemory = iota
	loaded     // from storage or the CA
	refused
	handshakeSources
)

var handshakeSourceLabels = [handshakeSources]string{"memory", "loaded", "refused"}

// stripedCounter is a counter spread over cache lines, so that handshakes
// on different cores rarely add to the same one.
type stripedCounter [8]struct {
	n atomic.Uint64
	_ [56]byte
}

// add counts one, on the stripe of hello's address: concurrent
// handshakes have hellos apart.
func (c *stripedCounter) add(hello *tls.ClientHelloInfo) {
	c[(uintptr(unsafe.Pointer(hello))>>8)&7].n.Add(1)
}

func (c *stripedCounter) load() uint64 {
	var n uint64
	for i := range c {
		n += c[i].n.Load()
	}
	return n
}

// problemLabels are the values of the failures metric's problem label:
// the ACME problem types (RFC 8555 §6.7 and later), without their
// namespace; "other" for a type outside them, so that a CA cannot grow
// the metric's series; "none" for failures without a problem document
// (no answer, storage).
var problemLabels = [...]string{
	"none", "other",
	"accountDoesNotExist", "alreadyReplaced", "alreadyRevoked", "badCSR", "badNonce",
	"badPublicKey", "badRevocationReason", "badSignatureAlgorithm", "caa", "compound",
	"connection", "dns", "externalAccountRequired", "incorrectResponse", "invalidContact",
	"malformed", "orderNotReady", "rateLimited", "rejectedIdentifier", "serverInternal",
	"tls", "unauthorized", "unsupportedContact", "unsupportedIdentifier", "userActionRequired",
}

// problemIndex returns the index in problemLabels of err's problem type.
func problemIndex(err error) int {
	t := problemType(err)
	if t == "" {
		return 0
	}
	short, ok := strings.CutPrefix(t, acme.ProblemTypeNamespace)
	if !ok {
		return 1
	}
	for i, l := range problemLabels[2:] {
		if l == short {
			return i + 2
		}
	}
	return 1
}

// order kinds and results, as the orders metric labels them.
const (
	orderObtain = iota
	orderRenew
)

var orderKindLabels = [2]string{"obtain", "renew"}
var orderResultLabels = [2]string{"success", "failure"}

// countOrder counts an order at is of kind, failed if err is not nil.
func (is *issuer) countOrder(kind int, err error) {
	result := 0
	if err != nil {
		result = 1
	}
	is.orders[kind][result].Add(1)
}

// Collector returns a Prometheus collector of the Manager's metrics, for
// the application to register ([prometheus.Registerer.Register]). Its
// series are fixed by the configuration, whatever the number of names:
// no metric has a label per name.
//
//   - acmetls_certificates{state,key_type}: certificates held, by
//     [CertState];
//   - acmetls_certificate_expiry_seconds: a histogram of the time left
//     until they expire;
//   - acmetls_orders_total{ca,kind,result}: orders placed, by CA, kind
//     (obtain, renew) and result (success, failure);
//   - acmetls_failures_total{problem}: failed attempts, by the CA's
//     problem type ("none" when the CA did not answer with one);
//   - acmetls_handshakes_total{source}: handshakes served from memory,
//     loaded (from storage or the CA), or refused;
//   - acmetls_cache_names: names held in memory;
//   - acmetls_staple_age_seconds: a histogram of the age of the OCSP
//     staples served;
//   - acmetls_held: 1 while a failure that is no name's holds every
//     attempt back; acmetls_ca_skipped{ca}: 1 while a CA is skipped for
//     the next (FallbackCAs).
//
// The two histograms describe the certificates at the scrape, not events
// since the start: a bucket's count may go down. Compare them between
// scrapes as gauges (alert on the count of certificates expiring within a
// week, say), not with rate().
//
// A scrape walks the schedule in memory (a few milliseconds at 100,000
// names) and reads the failure states as [Manager.Status] does, at most
// every few seconds.
//
// Handshakes are counted from the first call on: a hit from memory costs
// an atomic add more (2.6 ns), which a Manager without a collector does
// not pay.
func (m *Manager) Collector() prometheus.Collector {
	m.stats.on.Store(true)
	return &collector{m: m}
}

type collector struct{ m *Manager }

var (
	certificatesDesc = prometheus.NewDesc("acmetls_certificates",
		"Certificates held, by state (ok, due, expiring, expired, failing) and key type.", []string{"state", "key_type"}, nil)
	expiryDesc = prometheus.NewDesc("acmetls_certificate_expiry_seconds",
		"Time left until the certificates held expire.", nil, nil)
	ordersDesc = prometheus.NewDesc("acmetls_orders_total",
		"Orders placed at a CA, by CA directory, kind (obtain, renew) and result (success, failure).", []string{"ca", "kind", "result"}, nil)
	failuresDesc = prometheus.NewDesc("acmetls_failures_total",
		"Failed attempts to obtain or renew a certificate, by the CA's ACME problem type (none: no problem document).", []string{"problem"}, nil)
	handshakesDesc = prometheus.NewDesc("acmetls_handshakes_total",
		"TLS handshakes, by where the certificate came from: memory, loaded (storage or the CA), or refused.", []string{"source"}, nil)
	cacheDesc = prometheus.NewDesc("acmetls_cache_names",
		"Names whose certificates are held in memory.", nil, nil)
	stapleAgeDesc = prometheus.NewDesc("acmetls_staple_age_seconds",
		"Age of the OCSP staples served, from their thisUpdate.", nil, nil)
	heldDesc = prometheus.NewDesc("acmetls_held",
		"1 while a failure that is no one name's (the CA down, storage failing, a configuration error) holds every attempt back.", nil, nil)
	skippedDesc = prometheus.NewDesc("acmetls_ca_skipped",
		"1 while attempts skip this CA, failing for every name, and go to the next.", []string{"ca"}, nil)
)

var (
	day           = float64(24 * 60 * 60)
	expiryBuckets = []float64{0, day, 3 * day, 7 * day, 14 * day, 21 * day, 30 * day, 45 * day, 60 * day, 90 * day}
	stapleBuckets = []float64{3600, 6 * 3600, 12 * 3600, day, 2 * day, 3 * day, 4 * day, 7 * day}
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{certificatesDesc, expiryDesc, ordersDesc, failuresDesc, handshakesDesc, cacheDesc, stapleAgeDesc, heldDesc, skippedDesc} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	if m.init() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	states, _, err := m.failureStates(ctx)
	if err != nil {
		m.logger().Named("metrics").Warn("reading failure states; counting those last read", zapErr(err))
	}
	now := m.now()
	kts := m.keyTypes()
	var counts [len(stateNames)][]int
	for i := range counts {
		counts[i] = make([]int, len(kts))
	}
	ktIndex := func(ki keyIndex) int {
		for i, kt := range kts {
			if indexOf(kt) == ki {
				return i
			}
		}
		return -1
	}
	expiry := newHistogram(expiryBuckets)
	stapleAge := newHistogram(stapleBuckets)
	s := &m.sched
	s.mu.Lock()
	for key, t := range s.certs {
		if i := ktIndex(key.kt); i >= 0 {
			counts[certState(states[key].Failures, t.notBefore, t.notAfter, t.due, now)][i]++
		}
		expiry.observe(t.notAfter.Sub(now).Seconds())
		if t.stapleAt != 0 && !t.stapleUntil.IsZero() {
			stapleAge.observe(now.Sub(time.Unix(t.stapleAt, 0)).Seconds())
		}
	}
	for key := range states {
		if _, ok := s.certs[key]; !ok {
			if i := ktIndex(key.kt); i >= 0 {
				counts[stFailing][i]++
			}
		}
	}
	s.mu.Unlock()

	for st, name := range stateNames {
		for i, kt := range kts {
			ch <- prometheus.MustNewConstMetric(certificatesDesc, prometheus.GaugeValue, float64(counts[st][i]), string(name), string(kt))
		}
	}
	ch <- expiry.metric(expiryDesc)
	ch <- stapleAge.metric(stapleAgeDesc)
	for _, is := range m.issuers {
		for kind := range is.orders {
			for result := range is.orders[kind] {
				ch <- prometheus.MustNewConstMetric(ordersDesc, prometheus.CounterValue, float64(is.orders[kind][result].Load()),
					is.url, orderKindLabels[kind], orderResultLabels[result])
			}
		}
	}
	for i, l := range problemLabels {
		ch <- prometheus.MustNewConstMetric(failuresDesc, prometheus.CounterValue, float64(m.stats.failures[i].Load()), l)
	}
	for i, l := range handshakeSourceLabels {
		ch <- prometheus.MustNewConstMetric(handshakesDesc, prometheus.CounterValue, float64(m.stats.handshakes[i].load()), l)
	}
	ch <- prometheus.MustNewConstMetric(cacheDesc, prometheus.GaugeValue, float64(m.cache.len()))
	ch <- prometheus.MustNewConstMetric(heldDesc, prometheus.GaugeValue, boolValue(m.breaker.hold(now) != nil))
	for _, is := range m.issuers {
		ch <- prometheus.MustNewConstMetric(skippedDesc, prometheus.GaugeValue, boolValue(len(m.issuers) > 1 && is.down.hold(now) != nil), is.url)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// histogram is a histogram made at scrape time.
type histogram struct {
	bounds []float64
	counts []uint64 // per bucket, not cumulative
	count  uint64
	sum    float64
}

func newHistogram(bounds []float64) *histogram {
	return &histogram{bounds: bounds, counts: make([]uint64, len(bounds))}
}

func (h *histogram) observe(v float64) {
	h.count++
	h.sum += v
	for i, b := range h.bounds {
		if v <= b {
			h.counts[i]++
			return
		}
	}
}

func (h *histogram) metric(d *prometheus.Desc) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.bounds))
	var cum uint64
	for i, b := range h.bounds {
		cum += h.counts[i]
		buckets[b] = cum
	}
	return prometheus.MustNewConstHistogram(d, h.count, h.sum, buckets)
}
