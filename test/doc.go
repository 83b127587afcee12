// Package test holds the end-to-end tests of erspand and erspanctl: the real
// binaries, built once per run, in network namespaces joined by a veth pair,
// fed with ERSPAN from a raw GRE socket in a "switch" namespace and read back
// from the erspanN TAPs with packet sockets in the "collector" namespace.
//
// The tests need root (namespaces, veth, TAP, raw and packet sockets) and
// iproute2; without root they skip with a message. TestMain (lab_test.go)
// builds the binaries, with -race when the tests run with it (raceEnabled,
// race_test.go and norace_test.go); a data race a daemon or erspanctl
// reports on its stderr then fails the test that started it (checkRace).
// Two sets of helpers share the package: lab_test.go's (used by the
// transmit-side tests) and harness_test.go's plus packet_test.go's
// (namespaces, daemon, erspanctl, a raw GRE sender with two source addresses
// per family, background packet readers, delivery checks), used by the
// receive-side tests and meant for reuse.
package test
