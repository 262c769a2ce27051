package main

import (
	"context"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/acmetls/acmetls"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	m := &acmetls.Manager{Email: "ops@example.com", AgreeToTerms: true}
	// Listens on :80 (http-01, redirects to HTTPS) and :443 (HSTS), then
	// obtains the certificates; renews them until SIGTERM, then drains.
	err := m.ListenAndServe(ctx, http.FileServer(http.Dir(".")), "example.com", "www.example.com")
	if err != nil {
		log.Fatal(err)
	}
}
