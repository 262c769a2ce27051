//go:build race

package acmetls

const raceEnabled = true
