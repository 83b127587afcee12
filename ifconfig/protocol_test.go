package ifconfig

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/tunnel"
)

// serve runs the registry's protocol over an in-memory connection and
// returns a client for it.
func serve(t *testing.T, r *Registry) *Client {
	t.Helper()
	a, b := net.Pipe()
	go r.Serve(a)
	t.Cleanup(func() { a.Close(); b.Close() })
	return &Client{conn: b, br: bufio.NewReader(b)}
}

func TestProtocolRoundTrip(t *testing.T) {
	r := NewRegistry(newFake())
	c := serve(t, r)
	if err := c.Create("erspan0"); err != nil {
		t.Fatal(err)
	}
	ss, err := ParseSettings("erspan0", []string{"tunnel", "2001:db8::2", "2001:db8::1", "vnetid", "300", "up", "tunnelttl", "9"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Set("erspan0", ss); err != nil {
		t.Fatal(err)
	}
	got, err := c.Status("erspan0")
	if err != nil {
		t.Fatal(err)
	}
	want := mustStatus(t, r, "erspan0")
	if !equalJSON(t, got, want) {
		t.Errorf("over the wire:\n%+v\nlocally:\n%+v", got, want)
	}
	// The backend's sources (fakeBackend.Flows) come through, or the
	// comparison above proves nothing about them.
	if len(got.Sources) != 2 || got.Sources[0].Lost != 2 || got.SourcesOverflow != 3 {
		t.Errorf("sources %+v, overflow %d; want the backend's 2 sources and 3", got.Sources, got.SourcesOverflow)
	}
	var text bytes.Buffer
	WriteStatus(&text, &got)
	if line := "\tsources beyond the tracking limit: 3 packets\n"; !strings.Contains(text.String(), line) {
		t.Errorf("missing %q in:\n%s", line, text.String())
	}
	// Errors keep their errno, interface, setting and advice.
	if ss, err = ParseSettings("erspan0", []string{"vnetid", "5"}); err != nil {
		t.Fatal(err)
	}
	err = c.Set("erspan0", ss)
	var e *Error
	if !errors.As(err, &e) || e.Errno != syscall.EBUSY || e.Iface != "erspan0" || e.Setting != "vnetid 5" || !strings.Contains(e.Msg, "down") {
		t.Errorf("error over the wire: %#v", err)
	}
	// The connection still works after an error.
	all, err := c.All()
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Interfaces) != 1 || all.Daemon.Unmatched != 2 || len(all.Daemon.Drops) == 0 {
		t.Errorf("all: %+v", all)
	}
	if err := c.Destroy("erspan0"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status("erspan0"); !errors.Is(err, syscall.ENXIO) {
		t.Errorf("status after destroy: %v", err)
	}
}

func TestProtocolByHand(t *testing.T) {
	r := NewRegistry(newFake())
	if got := r.Handle("create=erspan3\n\n"); got != "errno=0\n\n" {
		t.Errorf("create: %q", got)
	}
	got := r.Handle("set=erspan3\nvnetid=2000\n\n")
	if !strings.HasSuffix(got, "errno=22\n\n") || !strings.Contains(got, "setting=vnetid 2000\n") {
		t.Errorf("set: %q", got)
	}
	if got := r.Handle("frob=erspan3\n\n"); !strings.Contains(got, "errno=95") {
		t.Errorf("unknown operation: %q", got)
	}
	if got := r.Handle("set=erspan3\nno equals sign\n\n"); !strings.Contains(got, "errno=22") {
		t.Errorf("malformed line: %q", got)
	}
	if got := r.Handle("get=erspan3\n\n"); !strings.Contains(got, "interface=erspan3\n") || !strings.HasSuffix(got, "errno=0\n\n") {
		t.Errorf("get: %q", got)
	}
}

// TestFormat checks the OpenBSD ifconfig layout of spec/erspan.md §2.
func TestFormat(t *testing.T) {
	v := 5
	s := Status{Name: "erspan0", Index: 7, Up: true, Monitor: true, LLAddr: "fe:e1:ba:d0:12:34", MTU: 1500,
		VNetID: &v, Tunnel: &TunnelStatus{Family: "inet", Src: "192.0.2.1", Dst: "192.0.2.2"},
		TTL: 64, TxPrio: "packet", RxPrio: "payload"}
	s.Flags, s.FlagSet = flags(true, true)
	var b bytes.Buffer
	WriteStatus(&b, &s)
	want := "erspan0: flags=1028843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,MONITOR> mtu 1500\n" +
		"\tlladdr fe:e1:ba:d0:12:34\n" +
		"\tindex 7 priority 0 llprio 3\n" +
		"\tencap: vnetid 5 txprio packet rxprio payload\n" +
		"\tgroups: erspan\n" +
		"\ttunnel: inet 192.0.2.1 --> 192.0.2.2 ttl 64 nodf\n"
	if !strings.HasPrefix(b.String(), want) {
		t.Errorf("got:\n%s\nwant prefix:\n%s", b.String(), want)
	}
	s.VNetID, s.Tunnel = nil, nil
	b.Reset()
	WriteStatus(&b, &s)
	for _, line := range []string{"\tencap: vnetid none txprio packet rxprio payload\n", "\ttunnel: (unset)\n"} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("missing %q in:\n%s", line, b.String())
		}
	}
	s.Tunnel = &TunnelStatus{Family: "inet6", Src: "2001:db8::2"}
	s.TunnelDomain, s.DF, s.TTL = "sensor", true, 3
	b.Reset()
	WriteStatus(&b, &s)
	if line := "\ttunnel: inet6 2001:db8::2 ttl 3 df rdomain sensor\n"; !strings.Contains(b.String(), line) {
		t.Errorf("missing %q in:\n%s", line, b.String())
	}
}

// TestServeListenerEnds: once its listener is closed, ServeListener ends
// the open connections and returns only after their handlers have, so that
// erspand's final state save follows the last change.
func TestServeListenerEnds(t *testing.T) {
	l, served := serveListener(t, NewRegistry(newFake()))
	c, err := Dial(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Create("erspan0"); err != nil { // the handler is running
		t.Fatal(err)
	}
	l.Close()
	awaitServed(t, served, "its listener closed")
	// The handler is gone: the connection is closed under the client.
	if _, err := c.All(); err == nil {
		t.Error("a request on a connection of a stopped server was answered")
	}
}

// TestServeListenerEndsStuckWriter: a client that sends requests and never
// reads the replies (its socket buffer full, the handler blocked in a
// write) does not hold ServeListener past its listener's close.
func TestServeListenerEndsStuckWriter(t *testing.T) {
	r := NewRegistry(newFake())
	for i := range 50 {
		if err := r.Create(fmt.Sprintf("erspan%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	l, served := serveListener(t, r)
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Requests for the status of every interface, never read: the replies
	// (kilobytes each) fill both socket buffers and block the handler.
	req := strings.Repeat("get=\n\n", 2000)
	c.SetWriteDeadline(time.Now().Add(3 * time.Second))
	go c.Write([]byte(req))
	// The handler is blocked once replies queued for the client stop
	// growing (the client's receive queue, SIOCINQ, at the limit).
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	queued := func() (n int) {
		raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		return n
	}
	for prev, deadline := -1, time.Now().Add(5*time.Second); ; time.Sleep(20 * time.Millisecond) {
		n := queued()
		if n > 0 && n == prev {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the handler's replies did not fill the client's socket within 5 s (%d bytes queued)", n)
		}
		prev = n
	}
	l.Close()
	awaitServed(t, served, "its listener closed, a handler blocked writing to a client that does not read")
}

// gatedBackend is a fakeBackend whose Create waits for gate.
type gatedBackend struct {
	*fakeBackend
	entered, gate chan struct{}
	applied       atomic.Bool
}

func (g *gatedBackend) Create(cfg tunnel.Config) (tunnel.Link, error) {
	close(g.entered)
	<-g.gate
	l, err := g.fakeBackend.Create(cfg)
	g.applied.Store(true)
	return l, err
}

// TestServeListenerWaitsForHandlers: a request being applied when the
// listener closes is finished and answered before ServeListener returns,
// so erspand's final state save (which follows it) holds the change; also
// when applying it outlasts the write grace (the reply's grace counts
// from its write).
func TestServeListenerWaitsForHandlers(t *testing.T) {
	b := &gatedBackend{fakeBackend: newFake(), entered: make(chan struct{}), gate: make(chan struct{})}
	l, served := serveListener(t, NewRegistry(b))
	c, err := Dial(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	created := make(chan error, 1)
	go func() { created <- c.Create("erspan0") }()
	<-b.entered
	l.Close()
	select {
	case <-served:
		t.Fatal("ServeListener returned while a request was being applied")
	case <-time.After(shutdownWriteGrace + 300*time.Millisecond):
	}
	close(b.gate)
	awaitServed(t, served, "the request was applied")
	if !b.applied.Load() {
		t.Error("ServeListener returned before the request was applied")
	}
	if err := <-created; err != nil {
		t.Errorf("the request in progress at close: %v, want it answered", err)
	}
}

// serveListener runs r.ServeListener on a socket of its own; the channel
// gets what it returns.
func serveListener(t *testing.T, r *Registry) (net.Listener, <-chan error) {
	t.Helper()
	l, err := Listen(filepath.Join(t.TempDir(), "erspand.sock"))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- r.ServeListener(l, nil) }()
	return l, served
}

// awaitServed fails the test unless ServeListener has returned, without
// error, within 5 s; why says what it waited for.
func awaitServed(t *testing.T, served <-chan error, why string) {
	t.Helper()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("ServeListener still running 5s after %s", why)
	}
}
