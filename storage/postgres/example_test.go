package postgres_test

import (
	"context"
	"fmt"
	"log"
	"net/http"

	"github.com/acmetls/acmetls"
	"github.com/acmetls/acmetls/storage/postgres"
)

// Every frontend of a fleet opens the same database: they share
// certificates, the ACME account, challenge answers, renewal state and
// staples, and one of them orders each certificate.
func Example() {
	ctx := context.Background()
	st, err := postgres.Open(ctx, "postgres://acmetls@db.internal:5432/acmetls?sslmode=verify-full")
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	m := &acmetls.Manager{
		Email:        "ops@example.com",
		AgreeToTerms: true,
		Storage:      st,
		OnDemand:     &acmetls.OnDemand{Names: []string{"example.com", "www.example.com"}},
	}
	go m.Run(ctx) // renewals, on every frontend: the storage lock picks one per certificate
	go func() { log.Fatal(http.ListenAndServe(":80", m.HTTPHandler(nil))) }()
	srv := &http.Server{Addr: ":443", TLSConfig: m.TLSConfig()}
	log.Fatal(srv.ListenAndServeTLS("", ""))
}

// A database administrator who keeps the right to create tables to
// themselves makes the table once; the frontends' role then needs only
// SELECT, INSERT, UPDATE and DELETE on it.
func ExampleSchema() {
	fmt.Println(postgres.Schema(""))
	// Output:
	// CREATE TABLE IF NOT EXISTS "acmetls_storage" (
	// 	key      text COLLATE "C" PRIMARY KEY,
	// 	value    bytea NOT NULL,
	// 	modified timestamptz NOT NULL DEFAULT now()
	// )
}
