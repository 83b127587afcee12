// Package test holds the end-to-end tests of erspand and erspanctl: the real
// binaries, built once per run, in network namespaces joined by veth pairs.
// The receive-side tests feed ERSPAN from a raw GRE socket in a "switch"
// namespace and read it back from the erspanN TAPs with packet sockets in
// the "collector" namespace; the transmit-side tests write frames into a
// switch's erspanN and read them off the wire and out of the collector's;
// the sensor tests write whole outer frames into a veth towards a NIC
// with no address.
//
// The tests need root (namespaces, veth, TAP, raw and packet sockets) and
// iproute2; without root they skip with a message. TestMain (main_test.go)
// builds the binaries, with -race when the tests run with it (raceEnabled,
// race_test.go and norace_test.go); a data race a daemon or erspanctl
// reports on its stderr then fails the test that started it (checkRace).
// One set of helpers serves every test: harness_test.go's namespaces
// (newNetNS, veth pairs, the switch-and-collector topology), daemons
// (startDaemon, erspanctl through daemon.ctl) and waits, and
// packet_test.go's raw GRE sender with two source addresses per family,
// inject (frames into an interface), background packet readers (frames
// into and out of an interface) and delivery checks.
package test
