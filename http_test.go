package acmetls

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// HTTPSHandler sends HSTS on answers over TLS only, for 60 days unless
// told otherwise, and lets the application override or turn it off.
func TestHTTPSHandlerHSTS(t *testing.T) {
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/own" {
			w.Header().Set("Strict-Transport-Security", "max-age=0")
		}
		w.Write([]byte("hello"))
	})
	for _, tc := range []struct {
		name   string
		maxAge time.Duration
		tls    bool
		path   string
		want   string
	}{
		{"default", 0, true, "/", "max-age=5184000"},
		{"one hour", time.Hour, true, "/", "max-age=3600"},
		{"plain HTTP", 0, false, "/", ""},
		{"turned off", -1, true, "/", ""},
		{"application's own", 0, true, "/own", "max-age=0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &Manager{HSTSMaxAge: tc.maxAge}
			h := m.HTTPSHandler(app)
			srv := httptest.NewUnstartedServer(h)
			if tc.tls {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			defer srv.Close()
			resp, err := srv.Client().Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := resp.Header.Values("Strict-Transport-Security"); len(got) > 1 || tc.want == "" && len(got) != 0 || tc.want != "" && (len(got) == 0 || got[0] != tc.want) {
				t.Errorf("Strict-Transport-Security: %q, want %q", got, tc.want)
			}
		})
	}
}

// TLSConfig offers TLS 1.2 with AEAD suites only: a client offering only
// CBC suites is refused, one offering GCM is served, and TLS 1.3 is Go's.
func TestTLSConfigSuites(t *testing.T) {
	m := cachedManager(t, 10, "suites.example.com")
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.TLS = m.TLSConfig()
	srv.StartTLS()
	defer srv.Close()
	dial := func(cfg *tls.Config) error {
		cfg.ServerName, cfg.InsecureSkipVerify = "suites.example.com", true
		c, err := tls.Dial("tcp", srv.Listener.Addr().String(), cfg)
		if err == nil {
			c.Close()
		}
		return err
	}
	cbc := []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
		tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA, tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
	if err := dial(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: cbc}); err == nil {
		t.Error("a TLS 1.2 client offering only CBC and RSA key exchange suites was served")
	}
	for _, cfg := range []*tls.Config{
		{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}},
		{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}},
		{MinVersion: tls.VersionTLS13},
	} {
		if err := dial(cfg); err != nil {
			t.Errorf("%+v: %v", cfg.CipherSuites, err)
		}
	}
}

// A client that sends no server name gets DefaultServerName's certificate.
func TestDefaultServerName(t *testing.T) {
	m := cachedManager(t, 10, "default.example.com")
	hello := &tls.ClientHelloInfo{SupportedVersions: []uint16{tls.VersionTLS13},
		SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}}
	if _, err := m.GetCertificate(hello); err == nil {
		t.Fatal("served a client without SNI and no DefaultServerName")
	}
	m.DefaultServerName = "default.example.com"
	if c, err := m.GetCertificate(hello); err != nil || c == nil {
		t.Fatalf("without SNI: %v", err)
	}
	if n := testing.AllocsPerRun(100, func() { m.GetCertificate(hello) }); n != 0 && !raceEnabled {
		t.Errorf("the default name's hit allocates %v times", n)
	}
}
