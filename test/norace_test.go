//go:build !race

package test

// raceEnabled: this test binary runs without the race detector, so
// TestMain builds erspand and erspanctl without it too (see race_test.go).
const raceEnabled = false
