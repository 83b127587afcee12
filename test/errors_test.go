package test

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/erspan-linux/erspan/ifconfig"
)

// wantError runs erspanctl with args and fails the test unless it exits
// non-zero with a message on stderr naming the interface, the setting and
// the errno, followed by what to do about it.
func wantError(t *testing.T, d *daemon, iface, setting, errno string, args ...string) {
	t.Helper()
	r := d.ctl(args...)
	if r.code == 0 {
		t.Errorf("%v\nwant a failure with %s", r, errno)
		return
	}
	for _, s := range []string{iface, setting, "(" + errno + ")"} {
		if s != "" && !strings.Contains(r.stderr, s) {
			t.Errorf("stderr does not name %q:\n%v", s, r)
		}
	}
	if i := strings.Index(r.stderr, "("+errno+")"); i >= 0 {
		if hint := strings.TrimSpace(strings.Trim(r.stderr[i+len(errno)+2:], ": \n")); len(hint) < 10 {
			t.Errorf("stderr says nothing about what to do after the errno:\n%v", r)
		}
	}
}

// TestErrnos checks every refusal of erspanctl, one subtest per errno, and
// that a refused setting leaves the interface as it was.
func TestErrnos(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	e := newEnv(t)
	d := e.d
	L, R, O := collect4.String(), switch4.String(), other4.String()

	t.Run("EBUSY", func(t *testing.T) {
		d := d.on(t)
		d.mustCtl("create", "erspan0", "tunnel", L, R, "vnetid", "77", "up")
		for _, s := range [][]string{
			{"vnetid", "78"}, {"-vnetid"}, {"tunnel", L, O}, {"tunneladdr", L}, {"-tunnel"},
		} {
			wantError(t, d, "erspan0", strings.Join(s, " "), "EBUSY", append([]string{"erspan0"}, s...)...)
		}
		st := d.status("erspan0")
		if !st.Up || st.VNetID == nil || *st.VNetID != 77 || st.Tunnel == nil || st.Tunnel.Src != L || st.Tunnel.Dst != R {
			t.Errorf("refused settings changed erspan0: %+v", st)
		}
		// Settings apply left to right, as ifconfig's: down, change, up.
		d.mustCtl("erspan0", "down", "vnetid", "78", "tunnel", L, O, "up")
		st = d.status("erspan0")
		if !st.Up || st.VNetID == nil || *st.VNetID != 78 || st.Tunnel == nil || st.Tunnel.Dst != O {
			t.Errorf("after down, vnetid 78, tunnel %s %s, up: %+v", L, O, st)
		}
		d.mustCtl("destroy", "erspan0")
	})

	t.Run("EINVAL", func(t *testing.T) {
		d := d.on(t)
		d.mustCtl("create", "erspan1")
		for _, s := range [][]string{
			{"vnetid", "1024"},
			{"vnetid", "-1"},
			{"tunnel", L, "2001:db8::1"},
			{"tunnel", "2001:db8::2", R},
			{"tunnel", "0.0.0.0", R},
			{"tunnel", L, "0.0.0.0"},
			{"tunnel", "224.0.0.1", R},
			{"tunnel", L, "239.1.2.3"},
			{"tunneladdr", "::"},
			{"tunneladdr", "ff02::1"},
		} {
			wantError(t, d, "erspan1", strings.Join(s, " "), "EINVAL", append([]string{"erspan1"}, s...)...)
		}
		if st := d.status("erspan1"); st.VNetID != nil || st.Tunnel != nil {
			t.Errorf("refused settings changed erspan1: vnetid %v tunnel %+v", st.VNetID, st.Tunnel)
		}
		d.mustCtl("destroy", "erspan1")
		for _, name := range []string{"foo0", "erspan", "erspanx1"} {
			wantError(t, d, name, "", "EINVAL", "create", name)
			if out, err := e.tp.col.ipErr("link", "show", name); err == nil {
				t.Errorf("create %s was refused but made a link:\n%s", name, out)
			}
		}
	})

	t.Run("EDESTADDRREQ", func(t *testing.T) {
		d := d.on(t)
		// create succeeds, its up does not.
		wantError(t, d, "erspan2", "up", "EDESTADDRREQ", "create", "erspan2", "up")
		d.mustCtl("erspan2", "tunnel", L, R)
		wantError(t, d, "erspan2", "up", "EDESTADDRREQ", "erspan2", "up")
		if st := d.status("erspan2"); st.Up {
			t.Errorf("erspan2 is up after a refused up")
		}
		// With a session it may come up; a collector needs none.
		d.mustCtl("erspan2", "vnetid", "5", "up")
		d.mustCtl("create", "erspan3", "tunneladdr", L, "up")
		d.mustCtl("destroy", "erspan2")
		d.mustCtl("destroy", "erspan3")
	})

	t.Run("EADDRINUSE", func(t *testing.T) {
		d := d.on(t)
		for _, c := range []struct {
			name     string
			settings []string
		}{
			{"exact", []string{"tunnel", L, R, "vnetid", "9"}},
			{"session-only", []string{"tunneladdr", L, "vnetid", "9"}},
			{"catch-all", []string{"tunneladdr", L}},
		} {
			d.mustCtl(append([]string{"create", "erspan4"}, append(c.settings, "up")...)...)
			d.mustCtl(append([]string{"create", "erspan5"}, c.settings...)...)
			wantError(t, d, "erspan5", "up", "EADDRINUSE", "erspan5", "up")
			r := d.ctl("erspan5", "up")
			if !strings.Contains(r.stderr, "erspan4") {
				t.Errorf("%s: the error does not name the interface in the way (erspan4):\n%v", c.name, r)
			}
			// Once erspan4 is down the key is free.
			d.mustCtl("erspan4", "down")
			d.mustCtl("erspan5", "up")
			d.mustCtl("destroy", "erspan4")
			d.mustCtl("destroy", "erspan5")
		}
	})

	t.Run("EEXIST", func(t *testing.T) {
		d := d.on(t)
		// A dummy link, or a veth where the kernel has no dummy driver.
		kind := "dummy"
		if _, err := e.tp.col.ipErr("link", "add", "erspan7", "type", "dummy"); err != nil {
			kind = "veth"
			e.tp.col.ip(t, "link", "add", "erspan7", "type", "veth", "peer", "name", "erspan7peer")
		}
		wantError(t, d, "erspan7", "create", "EEXIST", "create", "erspan7")
		// Neither create nor destroy may touch a link erspand did not make.
		if r := d.ctl("destroy", "erspan7"); r.code == 0 {
			t.Errorf("destroy of a link erspand did not make succeeded:\n%v", r)
		}
		if out := e.tp.col.ip(t, "-d", "link", "show", "erspan7"); !strings.Contains(out, kind) {
			t.Errorf("the %s erspan7 changed:\n%s", kind, out)
		}
		d.mustCtl("create", "erspan8")
		wantError(t, d, "erspan8", "create", "EEXIST", "create", "erspan8")
		d.mustCtl("destroy", "erspan8")
	})
}

// TestSettings checks erspanctl's view of an interface: the defaults at
// create, in JSON and in OpenBSD's ifconfig layout; the TAP it stands for;
// tunnel and vnetid set and cleared; destroy removing the TAP.
func TestSettings(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	tp := newTopology(t)
	d := startDaemon(t, tp.col)

	d.mustCtl("create", "erspan0")
	st := d.status("erspan0")
	if st.Name != "erspan0" || st.Up || !st.Monitor || st.MTU != 1500 || st.VNetID != nil || st.Tunnel != nil ||
		st.TTL != 64 || st.DF || st.TxPrio != "packet" || st.RxPrio != "payload" {
		t.Errorf("defaults at create: %+v", st)
	}
	if !regexp.MustCompile(`^fe:e1:ba:d[0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}$`).MatchString(st.LLAddr) {
		t.Errorf("lladdr %q, want fe:e1:ba:dX:XX:XX", st.LLAddr)
	}
	if want := []string{"BROADCAST", "SIMPLEX", "MULTICAST", "MONITOR"}; !slices.Equal(st.FlagSet, want) {
		t.Errorf("flags %v, want %v", st.FlagSet, want)
	}
	link := tp.col.ip(t, "-d", "link", "show", "erspan0")
	if !strings.Contains(link, "link/ether "+st.LLAddr) || !strings.Contains(link, "mtu 1500") || !strings.Contains(link, "tun type tap") {
		t.Errorf("the TAP does not match the status (%s, mtu 1500):\n%s", st.LLAddr, link)
	}
	text := d.mustCtl("erspan0")
	for _, want := range []string{
		"erspan0: flags=", "<BROADCAST,SIMPLEX,MULTICAST,MONITOR> mtu 1500\n",
		"\tlladdr " + st.LLAddr + "\n",
		"\tencap: vnetid none txprio packet rxprio payload\n",
		"\tgroups: erspan\n",
		"\ttunnel: (unset)\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("erspanctl erspan0 lacks %q:\n%s", want, text)
		}
	}

	d.mustCtl("erspan0", "tunnel", "192.0.2.2", "192.0.2.1", "vnetid", "5", "up")
	text = d.mustCtl("erspan0")
	for _, want := range []string{
		"<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,MONITOR> mtu 1500\n",
		"\tencap: vnetid 5 txprio packet rxprio payload\n",
		"\ttunnel: inet 192.0.2.2 --> 192.0.2.1 ttl 64 nodf\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("erspanctl erspan0 lacks %q:\n%s", want, text)
		}
	}
	if link := tp.col.ip(t, "link", "show", "erspan0"); !strings.Contains(link, ",UP") {
		t.Errorf("erspan0 is up but its TAP is not:\n%s", link)
	}

	d.mustCtl("create", "erspan1", "tunneladdr", "2001:db8::2")
	if text := d.mustCtl("erspan1"); !strings.Contains(text, "\ttunnel: inet6 2001:db8::2 ttl 64 nodf\n") {
		t.Errorf("collector's tunnel line:\n%s", text)
	}
	st = d.status("erspan1")
	if st.Tunnel == nil || st.Tunnel.Family != "inet6" || st.Tunnel.Src != "2001:db8::2" || st.Tunnel.Dst != "" {
		t.Errorf("erspan1 tunnel %+v", st.Tunnel)
	}

	// Every interface and the daemon's counters, every drop reason listed.
	a := d.all()
	var names []string
	for _, s := range a.Interfaces {
		names = append(names, s.Name)
	}
	if !slices.Equal(names, []string{"erspan0", "erspan1"}) {
		t.Errorf("erspanctl -j lists %v", names)
	}
	for _, reason := range []string{"truncated", "gre-version", "gre-flags", "inner-short"} {
		if _, ok := a.Daemon.Drops[reason]; !ok {
			t.Errorf("daemon.drops lacks %q: %v", reason, a.Daemon.Drops)
		}
	}
	if text := d.mustCtl(); !strings.Contains(text, "erspan0: flags=") || !strings.Contains(text, "erspan1: flags=") {
		t.Errorf("erspanctl with no argument:\n%s", text)
	}

	d.mustCtl("erspan0", "down", "-tunnel", "-vnetid")
	if st := d.status("erspan0"); st.Tunnel != nil || st.VNetID != nil || st.Up {
		t.Errorf("after down -tunnel -vnetid: %+v", st)
	}
	d.mustCtl("destroy", "erspan0")
	if out, err := tp.col.ipErr("link", "show", "erspan0"); err == nil {
		t.Errorf("erspan0's TAP is left after destroy:\n%s", out)
	}
	if r := d.ctl("-j", "erspan0"); r.code == 0 {
		t.Errorf("erspanctl -j erspan0 after destroy succeeded:\n%v", r)
	} else {
		var a ifconfig.All
		if json.Unmarshal([]byte(d.mustCtl("-j")), &a) != nil || len(a.Interfaces) != 1 {
			t.Errorf("after destroy erspanctl -j lists %+v", a.Interfaces)
		}
	}
}
