// Package bench measures acmetls side by side with CertMagic, autocert, a
// static tls.Config and a plain map, in one `go test -bench` run, on
// certificates from a local test CA made at benchmark time. See
// BENCHMARKS.md at the repository root for the commands and the figures.
package bench
