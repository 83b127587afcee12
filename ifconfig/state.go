package ifconfig

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/erspan-linux/erspan/tunnel"
)

// Sequencer is what persistence needs of the data path beyond Backend: the
// GRE sequence number each interface will send next.
type Sequencer interface {
	Seq(name string) uint32
	SetSeq(name string, seq uint32)
}

// State is the daemon's state file (design.md, Persistence): every
// interface as the settings that make it, in the command-line grammar, so
// that restoring takes the same path as erspanctl and hostname.erspanN.
type State struct {
	Interfaces []IfState `json:"interfaces"`
	// GREAllow is net.inet.gre.allow, kept across restarts.
	GREAllow *bool `json:"gre_allow,omitempty"`
}

// IfState is one interface in the state file.
type IfState struct {
	Name     string   `json:"name"`
	Settings []string `json:"settings"`
	// Seq is the next GRE sequence number to send; SeqRate the frames per
	// second sent before it was saved, which bounds how far the number
	// may have moved before a crash.
	Seq     uint32  `json:"seq"`
	SeqRate float64 `json:"seq_rate"`
	// Spans are the bridges the interface is a span port of.
	Spans []string `json:"spans,omitempty"`
}

// settingsOf is cfg as the settings that recreate it from the defaults,
// in an order that applies cleanly: placement, tunnel, then the rest, up
// last.
func settingsOf(c *tunnel.Config) []string {
	var s []string
	if c.TunnelDomain != "" {
		s = append(s, "tunneldomain "+c.TunnelDomain)
	}
	if c.TunnelDev != "" {
		s = append(s, "tunneldev "+c.TunnelDev)
	}
	switch {
	case c.Src.IsValid() && c.Dst.IsValid():
		s = append(s, "tunnel "+c.Src.String()+" "+c.Dst.String())
	case c.Src.IsValid():
		s = append(s, "tunneladdr "+c.Src.String())
	}
	if c.VNetID != tunnel.NoSession {
		s = append(s, "vnetid "+strconv.Itoa(c.VNetID))
	}
	s = append(s, "tunnelttl "+strconv.Itoa(c.TTL))
	if c.DF {
		s = append(s, "tunneldf")
	}
	if c.TxPrio != tunnel.TxPrioPacket {
		s = append(s, "txprio "+strconv.Itoa(c.TxPrio))
	}
	s = append(s, "mtu "+strconv.Itoa(c.MTU), "lladdr "+net.HardwareAddr(c.LLAddr).String())
	if !c.Monitor {
		s = append(s, "-monitor")
	}
	if c.Up {
		s = append(s, "up")
	}
	return s
}

// rdomainOf finds the rdomain among saved settings: the interface is
// created there.
func rdomainOf(settings []string) string {
	for _, l := range settings {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "rdomain" {
			return f[1]
		}
	}
	return ""
}

// snapshotState captures the registry for the state file.
func (r *Registry) snapshotState(seq Sequencer, rates map[string]float64) State {
	r.mu.Lock()
	defer r.mu.Unlock()
	allow := r.b.GREAllow()
	st := State{Interfaces: []IfState{}, GREAllow: &allow}
	for name, e := range r.ifs {
		settings := settingsOf(&e.cfg)
		if e.cfg.Rdomain != "" {
			settings = append([]string{"rdomain " + e.cfg.Rdomain}, settings...)
		}
		st.Interfaces = append(st.Interfaces, IfState{Name: name, Settings: settings, Seq: seq.Seq(name), SeqRate: rates[name],
			Spans: slices.Clone(e.spans)})
	}
	sort.Slice(st.Interfaces, func(i, j int) bool { return unitLess(st.Interfaces[i].Name, st.Interfaces[j].Name) })
	return st
}

// writeState is how Persist writes (a variable: tests count the writes).
var writeState = writeFileAtomic

// writeFileAtomic replaces path with data so that a reader, or a daemon
// killed at any moment, sees the old file or the new one, never a part.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// Restore recreates the interfaces of a state file: a restarted daemon
// re-adopts its TAPs with all their settings, and the GRE sequence of each
// continues upward (Linux receivers with iseq drop packets whose sequence
// goes backwards). It returns false when there is no state file. Errors of
// single interfaces are logged and do not stop the others.
func (r *Registry) Restore(path string, seq Sequencer, logf func(string, ...any)) (bool, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return false, fmt.Errorf("state file %s: %w", path, err)
	}
	if st.GREAllow != nil {
		r.b.SetGREAllow(*st.GREAllow)
	}
	for _, is := range st.Interfaces {
		if err := r.create(is.Name, rdomainOf(is.Settings)); err != nil {
			logf("state %s: %v", is.Name, err)
			continue
		}
		// Past anything sent since the last save: at the last rate, twice
		// the save interval. A collector sees this jump as a gap, which
		// is as close as it can be told what a crash cost.
		next := is.Seq + uint32(math.Ceil(2*is.SeqRate*persistInterval.Seconds())) + 1
		seq.SetSeq(is.Name, next)
		for _, line := range is.Settings {
			if strings.HasPrefix(line, "rdomain ") {
				continue
			}
			if err := r.applyLine(is.Name, line); err != nil {
				logf("state %s %q: %v", is.Name, line, err)
			}
		}
		for _, b := range is.Spans {
			if err := r.AddSpan(b, is.Name); err != nil {
				logf("state %s: span port of %s: %v", is.Name, b, err)
			}
		}
	}
	return true, nil
}

func (r *Registry) applyLine(name, line string) error {
	ss, err := ParseSettings(name, strings.Fields(line))
	if err != nil {
		return err
	}
	for _, s := range ss {
		if err := r.Set(name, s); err != nil {
			return err
		}
	}
	return nil
}

// persistInterval is how often the state file is rewritten while sequence
// numbers move; configuration changes are written within persistCoalesce.
const persistInterval = time.Second

// persistCoalesce is the least time between two writes for
// configuration changes: each write holds every interface, so a script
// making a thousand interfaces, written once per change, cost erspand
// two fifths of its CPU for the burst (quadratic in the count).
const persistCoalesce = 50 * time.Millisecond

// Persist writes the state file after a change, at once or, in a burst,
// persistCoalesce after the write before; while interfaces send, every
// persistInterval; and a last time when stop is closed, then returns.
func (r *Registry) Persist(path string, seq Sequencer, stop <-chan struct{}, logf func(string, ...any)) {
	last := map[string]uint32{}
	rates := map[string]float64{}
	lastTime := time.Now()
	// save writes the file when forced (a configuration change) or when
	// a sequence number moved; an idle daemon does not rewrite it.
	save := func(force bool) {
		now := time.Now()
		st := r.snapshotState(seq, rates)
		dt := now.Sub(lastTime).Seconds()
		changed := false
		for i := range st.Interfaces {
			is := &st.Interfaces[i]
			if prev, ok := last[is.Name]; ok && dt > 0 {
				rates[is.Name] = float64(is.Seq-prev) / dt
				is.SeqRate = rates[is.Name]
			}
			if last[is.Name] != is.Seq {
				changed = true
			}
			last[is.Name] = is.Seq
		}
		lastTime = now
		if !force && !changed {
			return
		}
		data, _ := json.MarshalIndent(st, "", "  ")
		if err := writeState(path, data); err != nil {
			logf("state file %s: %v", path, err)
		}
	}
	t := time.NewTicker(persistInterval)
	defer t.Stop()
	save(true)
	for {
		select {
		case <-stop:
			save(true)
			return
		case <-r.dirty:
			// At once, so a lone change is on disk as soon as it can
			// be; then no other write for persistCoalesce, so a burst
			// of changes goes in one write per persistCoalesce (the
			// token of a change meanwhile brings the next one).
			save(true)
			select {
			case <-time.After(persistCoalesce):
			case <-stop:
				save(true)
				return
			}
		case <-t.C:
			save(false)
		}
	}
}

// hostnameRE matches the configuration files OpenBSD's netstart reads, as
// /etc/erspan/hostname.erspanN.
var hostnameRE = regexp.MustCompile(`^hostname\.(erspan(0|[1-9][0-9]{0,8}))$`)

// ApplyConfigDir creates and configures an interface for every
// hostname.erspanN in dir (OpenBSD's hostname.if(5)): each line is a
// setting list in the command-line grammar, # starts a comment. A bad line
// is logged with its file and line number and does not stop the others.
// A missing dir is not an error.
func (r *Registry) ApplyConfigDir(dir string, logf func(string, ...any)) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		m := hostnameRE.FindStringSubmatch(e.Name())
		if m == nil || e.IsDir() {
			continue
		}
		name, path := m[1], filepath.Join(dir, e.Name())
		if err := r.applyHostnameFile(name, path, logf); err != nil {
			logf("%s: %v", path, err)
		}
	}
	return nil
}

func (r *Registry) applyHostnameFile(name, path string, logf func(string, ...any)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r.mu.Lock()
	_, exists := r.ifs[name]
	r.mu.Unlock()
	if !exists {
		if err := r.Create(name); err != nil {
			return err
		}
	}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		if err := r.applyLine(name, line); err != nil {
			logf("%s:%d: %v", path, n, err)
		}
	}
	return sc.Err()
}
