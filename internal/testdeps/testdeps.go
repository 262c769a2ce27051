// Package testdeps makes sure the machine has what the tests run besides
// Go: PostgreSQL's server binaries, curl, openssl and chromium. Test binaries call
// [Main] from TestMain with the tools they run.
//
// On a Debian machine where the tests run as root, what is missing is
// installed with apt-get, one test binary at a time (go test runs several
// at once); elsewhere the test binary stops with one line that names the
// command to run. .ci/run installs the same packages before the tests.
package testdeps

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The tools tests may ask for.
const (
	Postgres = "postgres" // PostgreSQL's server binaries, as internal/pgtest runs them
	Curl     = "curl"
	OpenSSL  = "openssl"
	Chromium = "chromium" // a headless browser, driven by chromedp
)

// packages are the Debian packages that hold the tools.
var packages = map[string]string{Postgres: "postgresql", Curl: "curl", OpenSSL: "openssl", Chromium: "chromium"}

// Main ensures tools are there, then runs the tests; it returns the exit
// code. Use it as os.Exit(testdeps.Main(m, testdeps.Curl)).
func Main(m *testing.M, tools ...string) int {
	if err := Ensure(tools...); err != nil {
		fmt.Fprintln(os.Stderr, "acmetls tests:", err)
		return 1
	}
	return m.Run()
}

// Ensure installs the tools that are missing, or says what to run.
func Ensure(tools ...string) error {
	missing := missingPackages(tools)
	if len(missing) == 0 {
		return nil
	}
	install := "apt-get install -y " + strings.Join(missing, " ")
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		return fmt.Errorf("%s missing: run `sudo %s` (or your system's equivalent), then the tests again", strings.Join(missing, ", "), install)
	}
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	if missing = missingPackages(tools); len(missing) == 0 {
		return nil // another test binary installed them meanwhile
	}
	fmt.Fprintf(os.Stderr, "acmetls tests: installing %s\n", strings.Join(missing, ", "))
	for _, args := range [][]string{{"update", "-qq"}, append([]string{"install", "-y", "-qq"}, missing...)} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %v: %s", strings.Join(args, " "), err, lastLine(out))
		}
	}
	if missing = missingPackages(tools); len(missing) != 0 {
		return fmt.Errorf("%s still missing after apt-get install", strings.Join(missing, ", "))
	}
	return nil
}

// missingPackages returns the packages of the tools that are not there.
func missingPackages(tools []string) []string {
	var missing []string
	for _, tool := range tools {
		if !present(tool) {
			missing = append(missing, packages[tool])
		}
	}
	return missing
}

func present(tool string) bool {
	if tool == Postgres {
		found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
		if len(found) > 0 {
			return true
		}
		_, err := exec.LookPath("initdb")
		return err == nil
	}
	_, err := exec.LookPath(tool)
	return err == nil
}

// lock takes a lock shared by the test binaries of one machine.
func lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "acmetls-testdeps.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}
