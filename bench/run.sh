#!/usr/bin/env bash
# Runs the benchmarks of BENCHMARKS.md and prints benchstat's tables.
# Takes about an hour on 2 cores; run it on an otherwise idle machine.
# Usage: bench/run.sh [output-dir] [group ...]   (groups: b1 b2 b3 b4 b5 b6 b7 b8 b9 b10)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
shift || true
groups=${*:-b1 b2 b3 b4 b5 b6 b7 b8 b9 b10}
mkdir -p "$out"
go install golang.org/x/perf/cmd/benchstat@latest
bs=$(go env GOPATH)/bin/benchstat
for g in $groups; do
	case $g in
	b1) go test -run '^$' -bench 'BenchmarkHit' -benchtime 0.5s ./bench/ -args -rounds 10 > "$out/b1.txt" ;;
	b2) go test -run '^$' -bench 'BenchmarkHandshake$' -benchtime 300x -count 10 ./bench/ > "$out/b2.txt"
		go test -run '^$' -bench 'BenchmarkHandshakeInterleaved' -benchtime 300x -count 10 ./bench/ > "$out/b2-interleaved.txt" ;;
	b3) go test -run '^$' -bench 'BenchmarkHeapPerName' -benchtime 1x -count 6 ./bench/ > "$out/b3.txt" ;;
	b4) go test -run '^$' -bench 'BenchmarkColdStart' -benchtime 5000x -count 6 ./bench/ > "$out/b4.txt" ;;
	b5) go test -run '^$' -bench 'BenchmarkMaintenancePass' -count 10 . > "$out/b5.txt" ;;
	b6) go test -run '^$' -bench 'BenchmarkGetCertificateHitStaple' -count 6 . > "$out/b6.txt" ;;
	b7) { go test -run '^$' -bench 'BenchmarkRefuse/impl=/names=(distinct|same|invalid)' -benchtime 20000x -count 6 ./bench/
		go test -run '^$' -bench 'BenchmarkRefuse/impl=(acmetls|autocert)/names=oversized' -benchtime 2000x -count 6 ./bench/
		go test -run '^$' -bench 'BenchmarkRefuse/impl=certmagic/names=oversized' -benchtime 20x -count 6 ./bench/; } > "$out/b7.txt" ;;
	b8) go test -run '^$' -bench 'BenchmarkFirstOnDemand' -benchtime 50x -count 4 ./bench/ > "$out/b8.txt" ;;
	b9) go test -run '^$' -bench 'BenchmarkResumption' -benchtime 2000x -count 6 ./bench/ > "$out/b9.txt" ;;
	b10) go test -run '^$' -bench 'BenchmarkStatus' -benchtime 20x -count 6 . > "$out/b10.txt" ;;
	esac
	echo "== $g"
	case $g in
	b1) "$bs" -col /impl -ignore /round "$out/b1.txt"; awk -f bench/ratios.awk "$out/b1.txt" | sort ;;
	b3 | b7 | b8) "$bs" -col /impl "$out/$g.txt" ;;
	b2) "$bs" -col /impl "$out/b2.txt"; "$bs" "$out/b2-interleaved.txt" ;;
	*) "$bs" "$out/$g.txt" ;;
	esac
done
