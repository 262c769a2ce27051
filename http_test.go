package acmetls

import (
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
