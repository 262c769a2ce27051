#!/usr/bin/env bash
# Runs the benchmarks of BENCHMARKS.md and prints benchstat's tables.
# Takes about 15 minutes on 2 cores; run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
go install golang.org/x/perf/cmd/benchstat@latest
bs=$(go env GOPATH)/bin/benchstat
go test -run '^$' -bench 'BenchmarkHit' -benchtime 300000x -count 10 ./bench/ > "$out/b1.txt"
go test -run '^$' -bench 'BenchmarkHandshake' -benchtime 300x -count 10 ./bench/ > "$out/b2.txt"
go test -run '^$' -bench 'BenchmarkHeapPerName' -benchtime 1x -count 3 ./bench/ > "$out/b3.txt"
go test -run '^$' -bench 'BenchmarkColdStart' -benchtime 5000x -count 5 ./bench/ > "$out/b4.txt"
for f in b1 b2 b3; do
	echo "== $f"
	"$bs" -col /impl "$out/$f.txt"
done
echo "== b4"
"$bs" "$out/b4.txt"
