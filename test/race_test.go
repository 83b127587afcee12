//go:build race

package test

// raceEnabled: this test binary runs under the race detector (go test
// -race), so TestMain builds erspand and erspanctl with -race too.
const raceEnabled = true
