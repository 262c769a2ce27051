package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/acmetls/acmetls/internal/testdeps"
)

// The tests run curl and openssl, installed if missing.
func TestMain(m *testing.M) { os.Exit(testdeps.Main(m, testdeps.Curl, testdeps.OpenSSL)) }

// The demo works as its output says: the printed curl command gets a page
// over a certificate from the embedded CA, ECDSA for curl, and an
// RSA-only openssl client gets the RSA certificate for the same name.
func TestDemoWithOutsideClients(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, pw, "", "", "", "127.0.0.1:0", "127.0.0.1:0", false, []string{"localhost"})
		pw.Close()
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo: %v", err)
		}
	}()

	var curlCmd, url string
	var output strings.Builder
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		output.WriteString(sc.Text() + "\n")
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "serving ") {
			url = strings.Fields(line)[1]
		}
		if strings.HasPrefix(line, "curl ") {
			curlCmd = line
		}
		if strings.HasPrefix(line, "openssl s_client") {
			break
		}
	}
	go io.Copy(io.Discard, pr)
	if curlCmd == "" {
		t.Fatal("the demo printed no curl command")
	}

	args := strings.Fields(curlCmd)
	cctx, ccancel := context.WithTimeout(ctx, time.Minute)
	defer ccancel()
	out, err := exec.CommandContext(cctx, args[0], append([]string{"--silent", "--show-error", "--include"}, args[1:]...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", curlCmd, err, out)
	}
	page := string(out)
	if !strings.Contains(strings.ToLower(page), "\nstrict-transport-security: max-age=5184000\r\n") {
		t.Errorf("no HSTS header of 60 days:\n%s", page)
	}
	for _, want := range []string{"server name: localhost", "certificate: ECDSA, serial ", "not after 20"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q:\n%s", want, page)
		}
	}

	hostPort := strings.TrimSuffix(strings.TrimPrefix(url, "https://localhost"), "/")
	ossl := exec.CommandContext(cctx, "openssl", "s_client", "-connect", "127.0.0.1"+hostPort,
		"-servername", "localhost", "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
	ossl.Stdin = strings.NewReader("")
	out, err = ossl.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl s_client: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Server public key is 2048 bit") {
		t.Errorf("the RSA-only client did not get the RSA 2048 certificate:\n%s", out)
	}

	// The staple, as the demo's output says to look at it, then on the
	// page.
	var stapleCmd string
	for _, line := range strings.Split(output.String(), "\n") {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "openssl s_client") {
			stapleCmd = strings.TrimSuffix(line, " </dev/null")
		}
	}
	if stapleCmd == "" {
		t.Fatalf("the demo printed no openssl command:\n%s", output.String())
	}
	args = strings.Fields(stapleCmd)
	st := exec.CommandContext(cctx, args[0], args[1:]...)
	st.Stdin = strings.NewReader("")
	out, err = st.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", stapleCmd, err, out)
	}
	for _, want := range []string{"OCSP Response Status: successful", "Cert Status: good"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("%s: no %q:\n%s", stapleCmd, want, out)
		}
	}
	args = strings.Fields(curlCmd)
	out, err = exec.CommandContext(cctx, args[0], append([]string{"--silent", "--show-error"}, args[1:]...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", curlCmd, err, out)
	}
	if page = string(out); !strings.Contains(page, "OCSP staple: good, ") {
		t.Errorf("the page does not show a good staple:\n%s", page)
	}
}
