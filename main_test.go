package acmetls

import (
	"os"
	"testing"

	"github.com/acmetls/acmetls/internal/pgtest"
	"github.com/acmetls/acmetls/internal/testdeps"
)

// The tests of frontends sharing PostgreSQL run on a server of their own;
// the staple tests run OpenSSL's OCSP responder; the admin page is
// tested in a headless chromium.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, testdeps.OpenSSL, testdeps.Chromium)) }
