package acmetls

import (
	"os"
	"testing"

	"github.com/acmetls/acmetls/internal/pgtest"
)

// The tests of frontends sharing PostgreSQL run on a server of their own.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
