# Prints, for each B1 case, the median over rounds of acmetls's ns/op
# divided by the map's in the same round.
# Usage: awk -f bench/ratios.awk b1.txt
$1 ~ /\/impl=(acmetls|map)-/ {
	n = split($1, p, "/")
	key = p[1] "/" p[3]
	if (p[4] ~ /^impl=acmetls/) a[key, p[2]] = $3; else m[key, p[2]] = $3
	keys[key] = 1; rounds[p[2]] = 1
}
END {
	for (k in keys) {
		c = 0
		for (r in rounds)
			if ((k, r) in a && (k, r) in m) x[++c] = a[k, r] / m[k, r]
		for (i = 2; i <= c; i++) { v = x[i]; for (j = i - 1; j > 0 && x[j] > v; j--) x[j + 1] = x[j]; x[j + 1] = v }
		med = (c % 2) ? x[(c + 1) / 2] : (x[c / 2] + x[c / 2 + 1]) / 2
		printf "%-32s acmetls/map per round: median %.2f (min %.2f, max %.2f, n=%d)\n", k, med, x[1], x[c], c
	}
}
