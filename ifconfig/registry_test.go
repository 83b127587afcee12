package ifconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/erspan-linux/erspan/tunnel"
)

// fakeBackend records what the registry hands to the data path.
type fakeBackend struct {
	cfgs       map[string]tunnel.Config
	createErr  error
	updateErr  error
	destroyErr error
	deny       bool
}

// mustStatus is r.Status(name), failing the test on an error (whose zero
// Status would pass checks for "no tunnel", "no spans" and the like).
func mustStatus(t *testing.T, r *Registry, name string) Status {
	t.Helper()
	s, err := r.Status(name)
	if err != nil {
		t.Fatalf("status of %s: %v", name, err)
	}
	return s
}

func newFake() *fakeBackend { return &fakeBackend{cfgs: map[string]tunnel.Config{}} }

func (f *fakeBackend) Create(cfg tunnel.Config) (tunnel.Link, error) {
	if f.createErr != nil {
		return tunnel.Link{}, f.createErr
	}
	f.cfgs[cfg.Name] = cfg
	return tunnel.Link{Index: 7, Name: cfg.Name, MAC: cfg.LLAddr, MTU: cfg.MTU}, nil
}

func (f *fakeBackend) Update(cfg tunnel.Config) error {
	if f.updateErr != nil {
		return f.updateErr
	}
	f.cfgs[cfg.Name] = cfg
	return nil
}

func (f *fakeBackend) Destroy(name string) error {
	delete(f.cfgs, name)
	return f.destroyErr
}

func (f *fakeBackend) Counters(string) tunnel.IfCounters { return tunnel.IfCounters{RxPackets: 3} }

func (f *fakeBackend) Flows(string) ([]tunnel.Flow, uint64) {
	return []tunnel.Flow{
		{Source: netip.MustParseAddr("192.0.2.1"), Session: 77, Packets: 9, Bytes: 900, LastSeq: 12, Gaps: 1, Lost: 2, Reordered: 1, Duplicates: 1},
		{Source: netip.MustParseAddr("2001:db8::1"), Session: tunnel.NoSession, Packets: 2, Bytes: 120, NoSequence: true},
	}, 3
}

func (f *fakeBackend) AddSpan(bridge, iface string) error {
	if bridge != "br0" {
		return fmt.Errorf("link %s: %w", bridge, syscall.ENODEV)
	}
	return nil
}

func (f *fakeBackend) DelSpan(bridge, iface string) error { return nil }

func (f *fakeBackend) CheckDevice(ns, dev string) error {
	if dev == "eth1" {
		return nil
	}
	return fmt.Errorf("interface %s: %w", dev, syscall.ENODEV)
}

func (f *fakeBackend) SetGREAllow(allow bool) { f.deny = !allow }

func (f *fakeBackend) GREAllow() bool { return !f.deny }

func (f *fakeBackend) CheckNamespace(name string) error {
	if name == "sensor" {
		return nil
	}
	return fmt.Errorf("netns %s: %w", name, syscall.ENOENT)
}

func (f *fakeBackend) DaemonCounters() tunnel.DaemonCounters {
	return tunnel.DaemonCounters{Unmatched: 2}
}

// set applies a command line's settings, as erspanctl does.
func set(r *Registry, name string, words ...string) error {
	return r.applyLine(name, strings.Join(words, " "))
}

func wantErrno(t *testing.T, err error, want syscall.Errno, iface, setting string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got %v, want %s", err, ErrnoName(want))
	}
	msg := err.Error()
	for _, s := range []string{iface, setting, ErrnoName(want)} {
		if !strings.Contains(msg, s) {
			t.Errorf("message %q does not name %q", msg, s)
		}
	}
}

func TestCreateDefaults(t *testing.T) {
	f := newFake()
	r := NewRegistry(f)
	if err := r.Create("erspan0"); err != nil {
		t.Fatal(err)
	}
	c := f.cfgs["erspan0"]
	if c.Up || !c.Monitor || c.MTU != 1500 || c.VNetID != tunnel.NoSession || c.Src.IsValid() || c.Dst.IsValid() {
		t.Errorf("defaults: %+v", c)
	}
	if !strings.HasPrefix(net.HardwareAddr(c.LLAddr).String(), "fe:e1:ba:d") {
		t.Errorf("lladdr %s is not fe:e1:ba:dX:XX:XX", net.HardwareAddr(c.LLAddr))
	}
	s, err := r.Status("erspan0")
	if err != nil {
		t.Fatal(err)
	}
	if s.VNetID != nil || s.Tunnel != nil || s.TTL != 64 || s.DF || s.TxPrio != "packet" || s.RxPrio != "payload" {
		t.Errorf("status defaults: %+v", s)
	}
	if s.Flags != 0x1028802 {
		t.Errorf("flags %x, want 1028802 (down, monitor)", s.Flags)
	}
	wantErrno(t, r.Create("erspan0"), syscall.EEXIST, "erspan0", "create")
}

func TestErrnos(t *testing.T) {
	tests := []struct {
		name    string
		prepare []string
		words   []string
		errno   syscall.Errno
		setting string
	}{
		{"vnetid too big", nil, []string{"vnetid", "1024"}, syscall.EINVAL, "vnetid 1024"},
		{"vnetid negative", nil, []string{"vnetid", "-1"}, syscall.EINVAL, "vnetid -1"},
		{"vnetid not a number", nil, []string{"vnetid", "x"}, syscall.EINVAL, "vnetid x"},
		{"mixed families", nil, []string{"tunnel", "192.0.2.2", "2001:db8::1"}, syscall.EINVAL, "tunnel 192.0.2.2 2001:db8::1"},
		{"unspecified", nil, []string{"tunnel", "0.0.0.0", "192.0.2.1"}, syscall.EINVAL, "tunnel 0.0.0.0"},
		{"unspecified v6", nil, []string{"tunneladdr", "::"}, syscall.EINVAL, "tunneladdr ::"},
		{"multicast", nil, []string{"tunnel", "224.0.0.1", "192.0.2.1"}, syscall.EINVAL, "tunnel 224.0.0.1"},
		{"multicast dst", nil, []string{"tunnel", "192.0.2.2", "ff02::1"}, syscall.EINVAL, "ff02::1"},
		{"not an address", nil, []string{"tunnel", "192.0.2", "192.0.2.1"}, syscall.EINVAL, "tunnel 192.0.2"},
		{"unknown setting", nil, []string{"frob"}, syscall.EINVAL, "frob"},
		{"missing argument", nil, []string{"tunnel", "192.0.2.2"}, syscall.EINVAL, "tunnel 192.0.2.2"},
		{"up without tunnel", nil, []string{"up"}, syscall.EDESTADDRREQ, "up"},
		{"up with dst no session", []string{"tunnel", "192.0.2.2", "192.0.2.1"}, []string{"up"}, syscall.EDESTADDRREQ, "up"},
		{"tunnel while up", []string{"tunneladdr", "192.0.2.2", "up"}, []string{"tunnel", "192.0.2.2", "192.0.2.1"}, syscall.EBUSY, "tunnel"},
		{"tunneladdr while up", []string{"tunneladdr", "192.0.2.2", "up"}, []string{"tunneladdr", "192.0.2.3"}, syscall.EBUSY, "tunneladdr"},
		{"-tunnel while up", []string{"tunneladdr", "192.0.2.2", "up"}, []string{"-tunnel"}, syscall.EBUSY, "-tunnel"},
		{"vnetid while up", []string{"tunneladdr", "192.0.2.2", "up"}, []string{"vnetid", "5"}, syscall.EBUSY, "vnetid 5"},
		{"-vnetid while up", []string{"tunneladdr", "192.0.2.2", "vnetid", "4", "up"}, []string{"-vnetid"}, syscall.EBUSY, "-vnetid"},
		{"tunnelttl 0", nil, []string{"tunnelttl", "0"}, syscall.EINVAL, "tunnelttl 0"},
		{"tunnelttl 256", nil, []string{"tunnelttl", "256"}, syscall.EINVAL, "tunnelttl 256"},
		{"txprio 8", nil, []string{"txprio", "8"}, syscall.EINVAL, "txprio 8"},
		{"txprio payload", nil, []string{"txprio", "payload"}, syscall.EINVAL, "txprio payload"},
		{"mtu 45", nil, []string{"mtu", "45"}, syscall.EINVAL, "mtu 45"},
		{"mtu 65436", nil, []string{"mtu", "65436"}, syscall.EINVAL, "mtu 65436"},
		{"lladdr multicast", nil, []string{"lladdr", "01:00:5e:00:00:01"}, syscall.EINVAL, "lladdr"},
		{"lladdr junk", nil, []string{"lladdr", "fe:e1"}, syscall.EINVAL, "lladdr"},
		{"tunneldomain missing", nil, []string{"tunneldomain", "nosuch"}, syscall.ENOENT, "tunneldomain nosuch"},
		{"tunneldomain while up", []string{"tunneladdr", "192.0.2.2", "up"}, []string{"tunneldomain", "sensor"}, syscall.EBUSY, "tunneldomain sensor"},
		{"rdomain missing", nil, []string{"rdomain", "nosuch"}, syscall.ENOENT, "rdomain nosuch"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRegistry(newFake())
			if err := r.Create("erspan0"); err != nil {
				t.Fatal(err)
			}
			if err := set(r, "erspan0", tc.prepare...); err != nil {
				t.Fatal(err)
			}
			wantErrno(t, set(r, "erspan0", tc.words...), tc.errno, "erspan0", tc.setting)
		})
	}
}

// TestValueBeforeState: a setting that comes over the protocol with a
// malformed value is refused as such (EINVAL), also where the interface's
// state would refuse the setting anyway (EBUSY while up), as erspanctl
// refuses it before sending.
func TestValueBeforeState(t *testing.T) {
	r := NewRegistry(newFake())
	if err := r.Create("erspan0"); err != nil {
		t.Fatal(err)
	}
	if err := set(r, "erspan0", "tunneladdr", "192.0.2.2", "up"); err != nil {
		t.Fatal(err)
	}
	for _, s := range []Setting{
		{"vnetid", []string{"x"}},
		{"tunnel", []string{"192.0.2.2", "224.0.0.1"}},
		{"tunneldomain", []string{"a/b"}},
	} {
		wantErrno(t, r.Set("erspan0", s), syscall.EINVAL, "erspan0", s.String())
	}
	wantErrno(t, r.Set("erspan0", Setting{"vnetid", []string{"5"}}), syscall.EBUSY, "erspan0", "vnetid 5")
}

func TestBadNames(t *testing.T) {
	r := NewRegistry(newFake())
	for _, n := range []string{"foo0", "erspan", "erspan-1", "erspan01", "erspan1234567890", "eth0"} {
		if err := r.Create(n); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("create %q: %v, want EINVAL", n, err)
		}
	}
	for _, n := range []string{"erspan0", "erspan9", "erspan1023", "erspan999999999"} {
		if err := r.Create(n); err != nil {
			t.Errorf("create %q: %v", n, err)
		}
	}
	wantErrno(t, r.Set("erspan5", Setting{Name: "up"}), syscall.ENXIO, "erspan5", "up")
	wantErrno(t, r.Destroy("erspan5"), syscall.ENXIO, "erspan5", "destroy")
}

func TestAddrInUse(t *testing.T) {
	r := NewRegistry(newFake())
	for _, n := range []string{"erspan0", "erspan1", "erspan2", "erspan3"} {
		if err := r.Create(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := set(r, "erspan0", "tunnel", "192.0.2.2", "192.0.2.1", "vnetid", "7", "up"); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, set(r, "erspan1", "tunnel", "192.0.2.2", "192.0.2.1", "vnetid", "7", "up"), syscall.EADDRINUSE, "erspan1", "up")
	// Another session, a collector and a catch-all on the same address
	// are different keys.
	if err := set(r, "erspan1", "vnetid", "8", "up"); err != nil {
		t.Errorf("other session: %v", err)
	}
	if err := set(r, "erspan2", "tunneladdr", "192.0.2.2", "vnetid", "7", "up"); err != nil {
		t.Errorf("collector: %v", err)
	}
	if err := set(r, "erspan3", "tunneladdr", "192.0.2.2", "up"); err != nil {
		t.Errorf("catch-all: %v", err)
	}
	// Down, the key is free again.
	if err := set(r, "erspan0", "down"); err != nil {
		t.Fatal(err)
	}
	if err := set(r, "erspan1", "down", "vnetid", "7", "up"); err != nil {
		t.Errorf("after the other went down: %v", err)
	}
}

func TestBackendErrnoKept(t *testing.T) {
	f := newFake()
	r := NewRegistry(f)
	f.createErr = fmt.Errorf("link erspan0 exists: %w", syscall.EEXIST)
	err := r.Create("erspan0")
	wantErrno(t, err, syscall.EEXIST, "erspan0", "create")
	if !strings.Contains(err.Error(), "remove or rename") {
		t.Errorf("EEXIST message does not say what to do: %v", err)
	}
	f.createErr = nil
	if err := r.Create("erspan0"); err != nil {
		t.Fatal(err)
	}
	f.updateErr = fmt.Errorf("open socket: %w", syscall.EPERM)
	err = set(r, "erspan0", "tunneladdr", "192.0.2.2")
	wantErrno(t, err, syscall.EPERM, "erspan0", "tunneladdr")
	// A refused change is not recorded.
	if s := mustStatus(t, r, "erspan0"); s.Tunnel != nil {
		t.Errorf("refused change recorded: %+v", s.Tunnel)
	}
	// The backend forgets an interface it failed to remove the TAP of
	// (tunnel.Host.Destroy): the error is reported, and the name is free
	// again rather than held by the registry alone (create EEXIST,
	// destroy ENXIO for ever).
	f.destroyErr = fmt.Errorf("namespace gone: %w", syscall.ENOENT)
	wantErrno(t, r.Destroy("erspan0"), syscall.ENOENT, "erspan0", "destroy")
	f.destroyErr = nil
	if err := r.Create("erspan0"); err != nil {
		t.Errorf("create after a destroy that failed: %v", err)
	}
}

func TestSettingsLeftToRight(t *testing.T) {
	r := NewRegistry(newFake())
	if err := r.Create("erspan0"); err != nil {
		t.Fatal(err)
	}
	// ifconfig applies left to right and stops at the first failure:
	// the tunnel is set, up is refused for want of a session (a state
	// the line itself made), and mtu after it is never tried.
	err := set(r, "erspan0", "tunnel", "2001:db8::2", "2001:db8::1", "up", "mtu", "1400")
	wantErrno(t, err, syscall.EDESTADDRREQ, "erspan0", "up")
	s := mustStatus(t, r, "erspan0")
	if s.Tunnel == nil || s.Tunnel.Family != "inet6" || s.Up || s.MTU == 1400 {
		t.Errorf("after partial apply: %+v %+v", s, s.Tunnel)
	}
	if err := set(r, "erspan0", "-tunnel", "-monitor"); err != nil {
		t.Fatal(err)
	}
	if s := mustStatus(t, r, "erspan0"); s.Tunnel != nil || s.Monitor {
		t.Errorf("-tunnel -monitor: %+v", s)
	}
	// A value that is wrong whatever the state (a number out of range,
	// not an address) refuses the whole line before any of it applies:
	// erspanctl finds it without erspand, and a line is not left half
	// done for a typo.
	err = set(r, "erspan0", "tunnel", "2001:db8::2", "2001:db8::1", "vnetid", "5000", "up")
	wantErrno(t, err, syscall.EINVAL, "erspan0", "vnetid 5000")
	if s := mustStatus(t, r, "erspan0"); s.Tunnel != nil || s.Up {
		t.Errorf("a line with a bad value applied in part: %+v", s)
	}
}

func TestSettingsWhileUp(t *testing.T) {
	f := newFake()
	r := NewRegistry(f)
	if err := r.Create("erspan0"); err != nil {
		t.Fatal(err)
	}
	// OpenBSD allows these on a running interface.
	err := set(r, "erspan0", "tunnel", "192.0.2.2", "192.0.2.1", "vnetid", "9", "up",
		"tunnelttl", "17", "tunneldf", "txprio", "5", "mtu", "9000", "lladdr", "fe:e1:ba:d0:00:01", "rdomain", "sensor")
	if err != nil {
		t.Fatal(err)
	}
	c := f.cfgs["erspan0"]
	if c.TTL != 17 || !c.DF || c.TxPrio != 5 || c.MTU != 9000 || net.HardwareAddr(c.LLAddr).String() != "fe:e1:ba:d0:00:01" || c.Rdomain != "sensor" {
		t.Errorf("config %+v", c)
	}
	s := mustStatus(t, r, "erspan0")
	if s.TTL != 17 || !s.DF || s.TxPrio != "5" || s.MTU != 9000 || s.Rdomain != "sensor" {
		t.Errorf("status %+v", s)
	}
	if err := set(r, "erspan0", "txprio", "packet", "-tunneldf", "-rdomain"); err != nil {
		t.Fatal(err)
	}
	if s := mustStatus(t, r, "erspan0"); s.TxPrio != "packet" || s.DF || s.Rdomain != "" {
		t.Errorf("status %+v", s)
	}
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return bytes.Equal(ja, jb)
}

func TestSpanPorts(t *testing.T) {
	r := NewRegistry(newFake())
	if err := r.Create("erspan0"); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, r.AddSpan("br0", "erspan1"), syscall.ENXIO, "erspan1", "addspan erspan1")
	wantErrno(t, r.AddSpan("eth9", "erspan0"), syscall.ENODEV, "eth9", "addspan erspan0")
	if err := r.AddSpan("br0", "erspan0"); err != nil {
		t.Fatal(err)
	}
	if err := r.AddSpan("br0", "erspan0"); err != nil {
		t.Errorf("addspan twice: %v", err)
	}
	s := mustStatus(t, r, "erspan0")
	if len(s.Spans) != 1 || s.Spans[0] != "br0" {
		t.Errorf("spans %v", s.Spans)
	}
	var b bytes.Buffer
	WriteStatus(&b, &s)
	if !strings.Contains(b.String(), "\tspan: br0\n") {
		t.Errorf("no span line in:\n%s", b.String())
	}
	wantErrno(t, set(r, "erspan0", "rdomain", "sensor"), syscall.EBUSY, "erspan0", "rdomain sensor")
	if err := r.DelSpan("br0", "erspan0"); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, r.DelSpan("br0", "erspan0"), syscall.ENOENT, "br0", "delspan erspan0")
	// A bad bridge name is refused as such, before the interface is
	// looked up, as erspanctl refuses it (CheckSpan).
	wantErrno(t, r.DelSpan("br/0", "erspan0"), syscall.EINVAL, "br/0", "delspan erspan0")
	wantErrno(t, r.AddSpan("br/0", "erspan7"), syscall.EINVAL, "br/0", "addspan erspan7")
	if s := mustStatus(t, r, "erspan0"); len(s.Spans) != 0 {
		t.Errorf("spans after delspan: %v", s.Spans)
	}
}

func TestSensorMode(t *testing.T) {
	f := newFake()
	r := NewRegistry(f)
	for _, n := range []string{"erspan0", "erspan1"} {
		if err := r.Create(n); err != nil {
			t.Fatal(err)
		}
	}
	wantErrno(t, set(r, "erspan0", "tunneldev", "eth9"), syscall.ENODEV, "erspan0", "tunneldev eth9")
	// Without addresses, up is allowed in sensor mode.
	if err := set(r, "erspan0", "tunneldev", "eth1", "up"); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, set(r, "erspan0", "-tunneldev"), syscall.EBUSY, "erspan0", "-tunneldev")
	// Another interface on the same NIC needs another key.
	wantErrno(t, set(r, "erspan1", "tunneldev", "eth1", "up"), syscall.EADDRINUSE, "erspan1", "up")
	if err := set(r, "erspan1", "vnetid", "7", "up"); err != nil {
		t.Fatal(err)
	}
	s := mustStatus(t, r, "erspan1")
	var b bytes.Buffer
	WriteStatus(&b, &s)
	if s.TunnelDev != "eth1" || !strings.Contains(b.String(), "\ttunnel: dev eth1 ttl 64 nodf\n") {
		t.Errorf("status %+v\n%s", s, b.String())
	}
	if err := set(r, "erspan1", "down", "tunneladdr", "192.0.2.2", "up"); err != nil {
		t.Fatal(err)
	}
	s = mustStatus(t, r, "erspan1")
	b.Reset()
	WriteStatus(&b, &s)
	if !strings.Contains(b.String(), "\ttunnel: dev eth1 inet 192.0.2.2 ttl 64 nodf\n") {
		t.Errorf("with a filter address:\n%s", b.String())
	}
}

func TestSysctl(t *testing.T) {
	f := newFake()
	r := NewRegistry(f)
	c := serve(t, r)
	if v, err := c.Sysctl("net.inet.gre.allow", ""); err != nil || v != "1" {
		t.Errorf("default: %q %v", v, err)
	}
	if v, err := c.Sysctl("net.inet.gre.allow", "0"); err != nil || v != "0" || !f.deny {
		t.Errorf("set 0: %q %v", v, err)
	}
	if _, err := c.Sysctl("net.inet.gre.allow", "2"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("set 2: %v", err)
	}
	if _, err := c.Sysctl("net.inet.ip.forwarding", ""); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("unknown: %v", err)
	}
	if a, err := c.All(); err != nil || a.Daemon.GREAllow {
		t.Errorf("gre_allow in get: %v, %v", a.Daemon.GREAllow, err)
	}
}
