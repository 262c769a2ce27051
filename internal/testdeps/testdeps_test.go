package testdeps

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A missing tool is installed with apt-get, through the lock, and found
// after; one apt-get cannot install is an error naming the package. A
// fake apt-get on PATH stands for Debian's, so that the test installs
// nothing on the machine.
func TestEnsureInstalls(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("Ensure installs only as root; run the tests as root, as .ci/run does")
	}
	bin := t.TempDir()
	log := filepath.Join(bin, "apt-get.log")
	fake := `#!/bin/sh
echo "$@" >> ` + log + `
case "$1" in
install)
	for p in "$@"; do
		if [ "$p" = fake-pkg ]; then
			printf '#!/bin/sh\n' > ` + bin + `/acmetls-fake-tool
			chmod +x ` + bin + `/acmetls-fake-tool
		fi
		if [ "$p" = broken-pkg ]; then
			echo "E: Unable to locate package broken-pkg"; exit 100
		fi
	done ;;
esac
`
	if err := os.WriteFile(filepath.Join(bin, "apt-get"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	packages["acmetls-fake-tool"] = "fake-pkg"
	packages["acmetls-broken-tool"] = "broken-pkg"
	t.Cleanup(func() {
		delete(packages, "acmetls-fake-tool")
		delete(packages, "acmetls-broken-tool")
	})

	if err := Ensure("acmetls-fake-tool"); err != nil {
		t.Fatal(err)
	}
	if !present("acmetls-fake-tool") {
		t.Error("the tool is not there after Ensure")
	}
	calls, _ := os.ReadFile(log)
	if got := string(calls); !strings.Contains(got, "update -qq") || !strings.Contains(got, "install -y -qq fake-pkg") {
		t.Errorf("apt-get was called with:\n%s", got)
	}
	if err := Ensure("acmetls-fake-tool"); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(log); string(again) != string(calls) {
		t.Error("apt-get was called again for a tool already there")
	}
	err := Ensure("acmetls-broken-tool")
	if err == nil || !strings.Contains(err.Error(), "broken-pkg") || strings.Count(err.Error(), "\n") != 0 {
		t.Errorf("a package apt-get cannot install: %v; want one line naming it", err)
	}
}
