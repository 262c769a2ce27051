//go:build !race

package acmetls

const raceEnabled = false
