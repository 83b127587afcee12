package ifconfig

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// The control protocol is line text, modelled on wireguard-go's UAPI
// (design.md, Processes). A request is an operation line, key=value lines
// and a blank line:
//
//	create=erspan0          create an interface
//	destroy=erspan0         destroy it
//	set=erspan0             then one line per setting, applied in order,
//	tunnel=192.0.2.2 192.0.2.1   each one ioctl of OpenBSD's (SIOCSLIFPHYADDR,
//	vnetid=77               SIOCSVNETID, SIOCSIFFLAGS, ...); the first
//	up=                     failure stops the rest
//	get=erspan0             one interface; get= with no name: all of them
//	sysctl=net.inet.gre.allow   read it; a line value=0|1 sets it
//	addspan=br0             then interface=erspan0 (delspan= alike)
//
// The reply is zero or more key=value lines, then errno=N (0 for success)
// and a blank line. A failure adds, before errno, the lines iface=,
// setting= and message=. `nc -U /run/erspan/erspand.sock` can drive it.

// maxRequestLines bounds a request, so a broken client cannot make the
// daemon hold an unbounded one.
const maxRequestLines = 1024

// Serve answers requests on one connection until it closes.
func (r *Registry) Serve(rw io.ReadWriter) error {
	br := bufio.NewReader(rw)
	for {
		op, arg, lines, err := readRequest(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		var out strings.Builder
		rerr := r.handle(&out, op, arg, lines)
		writeErr(&out, rerr)
		if _, err := io.WriteString(rw, out.String()); err != nil {
			return err
		}
	}
}

// Handle answers one request given as text, for tests and for driving the
// registry without a socket (as wireguard-go's IpcSet).
func (r *Registry) Handle(request string) string {
	var out strings.Builder
	op, arg, lines, err := readRequest(bufio.NewReader(strings.NewReader(request)))
	if err != nil {
		writeErr(&out, newError(syscall.EPROTO, "", "", "malformed request: %v", err))
		return out.String()
	}
	writeErr(&out, r.handle(&out, op, arg, lines))
	return out.String()
}

func readRequest(br *bufio.Reader) (op, arg string, lines []string, err error) {
	first := true
	for n := 0; ; n++ {
		line, err := br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && line == "" && first {
				return "", "", nil, io.EOF
			}
			return "", "", nil, fmt.Errorf("request cut short: %w", err)
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if first {
				continue // tolerate blank lines between requests
			}
			return op, arg, lines, nil
		}
		if n > maxRequestLines {
			return "", "", nil, errors.New("request too long")
		}
		if first {
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return "", "", nil, fmt.Errorf("operation line %q is not key=value", line)
			}
			op, arg, first = k, v, false
			continue
		}
		lines = append(lines, line)
	}
}

func (r *Registry) handle(out *strings.Builder, op, arg string, lines []string) error {
	switch op {
	case "create":
		return r.Create(arg)
	case "destroy":
		return r.Destroy(arg)
	case "set":
		for _, l := range lines {
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				return newError(syscall.EINVAL, arg, l, "protocol line is not key=value")
			}
			if err := r.Set(arg, Setting{Name: k, Args: strings.Fields(v)}); err != nil {
				return err
			}
		}
		return nil
	case "sysctl":
		var value string
		for _, l := range lines {
			if v, ok := strings.CutPrefix(l, "value="); ok {
				value = v
			}
		}
		v, err := r.Sysctl(arg, value)
		if err != nil {
			return err
		}
		kv(out, arg, v)
		return nil
	case "addspan", "delspan":
		// OpenBSD's SIOCBRDGADDS / SIOCBRDGDELS on a bridge: the
		// operation names the bridge, one line the span port.
		var iface string
		for _, l := range lines {
			if v, ok := strings.CutPrefix(l, "interface="); ok {
				iface = v
			}
		}
		if op == "addspan" {
			return r.AddSpan(arg, iface)
		}
		return r.DelSpan(arg, iface)
	case "get":
		if arg == "" {
			a := r.All()
			for i := range a.Interfaces {
				writeStatus(out, &a.Interfaces[i])
			}
			writeDaemon(out, &a.Daemon)
			return nil
		}
		s, err := r.Status(arg)
		if err != nil {
			return err
		}
		writeStatus(out, &s)
		return nil
	}
	return newError(syscall.EOPNOTSUPP, arg, op, "unknown operation; the operations are create, destroy, set, get, addspan, delspan and sysctl")
}

func writeErr(out *strings.Builder, err error) {
	if err == nil {
		out.WriteString("errno=0\n\n")
		return
	}
	e := asError(err, "", "")
	kv(out, "iface", e.Iface)
	kv(out, "setting", e.Setting)
	msg := e.Msg
	if e.Err != nil {
		if msg != "" {
			msg += ": "
		}
		msg += e.Err.Error()
	}
	kv(out, "message", msg)
	fmt.Fprintf(out, "errno=%d\n\n", int(e.Errno))
}

// kv writes one key=value line; newlines in values would end the reply
// early, so they become spaces.
func kv(out *strings.Builder, k string, v any) {
	s := strings.ReplaceAll(fmt.Sprint(v), "\n", " ")
	out.WriteString(k)
	out.WriteByte('=')
	out.WriteString(s)
	out.WriteByte('\n')
}

func boolStr(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// writeStatus encodes one interface; "interface=" starts it. Counters are
// sent under their JSON names, so that adding one needs no protocol change.
func writeStatus(out *strings.Builder, s *Status) {
	kv(out, "interface", s.Name)
	kv(out, "index", s.Index)
	kv(out, "up", boolStr(s.Up))
	kv(out, "monitor", boolStr(s.Monitor))
	kv(out, "lladdr", s.LLAddr)
	kv(out, "mtu", s.MTU)
	if s.VNetID != nil {
		kv(out, "vnetid", *s.VNetID)
	}
	if s.Tunnel != nil {
		kv(out, "tunnel_src", s.Tunnel.Src)
		if s.Tunnel.Dst != "" {
			kv(out, "tunnel_dst", s.Tunnel.Dst)
		}
	}
	kv(out, "tunneldev", s.TunnelDev)
	kv(out, "ttl", s.TTL)
	kv(out, "df", boolStr(s.DF))
	kv(out, "txprio", s.TxPrio)
	kv(out, "rxprio", s.RxPrio)
	kv(out, "tunneldomain", s.TunnelDomain)
	kv(out, "rdomain", s.Rdomain)
	for _, b := range s.Spans {
		kv(out, "span", b)
	}
	writeCounters(out, s.Counters)
	kv(out, "sources_overflow", s.SourcesOverflow)
	for _, src := range s.Sources {
		sess := -1
		if src.Session != nil {
			sess = *src.Session
		}
		kv(out, "source", fmt.Sprintf("%s %d %d %d %s %d %d %d %d %d %d", src.Source, sess, src.Packets, src.Bytes,
			boolStr(src.NoSequence), src.LastSeq, src.Gaps, src.Lost, src.Reordered, src.Duplicates, src.Restarts))
	}
}

// parseSource reads a source= line of writeStatus.
func parseSource(v string) (SourceStatus, error) {
	var s SourceStatus
	var sess int
	var noseq string
	_, err := fmt.Sscanf(v, "%s %d %d %d %s %d %d %d %d %d %d", &s.Source, &sess, &s.Packets, &s.Bytes,
		&noseq, &s.LastSeq, &s.Gaps, &s.Lost, &s.Reordered, &s.Duplicates, &s.Restarts)
	if err != nil {
		return s, fmt.Errorf("source line %q: %w", v, err)
	}
	if sess >= 0 {
		s.Session = &sess
	}
	s.NoSequence = noseq == "1"
	return s, nil
}

func writeDaemon(out *strings.Builder, d *DaemonStatus) {
	kv(out, "daemon", 1)
	kv(out, "daemon_rx_packets", d.RxPackets)
	kv(out, "daemon_unmatched", d.Unmatched)
	kv(out, "daemon_kernel_drops", d.KernelDrops)
	kv(out, "daemon_disallowed", d.Disallowed)
	kv(out, "daemon_gre_allow", boolStr(d.GREAllow))
	names := make([]string, 0, len(d.Drops))
	for n := range d.Drops {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		kv(out, "daemon_drop_"+n, d.Drops[n])
	}
}

func writeCounters(out *strings.Builder, c any) {
	// Through JSON, so the counter structs' tags are the one list of names.
	b, _ := json.Marshal(c)
	m := map[string]uint64{}
	_ = json.Unmarshal(b, &m)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		kv(out, "counter_"+k, m[k])
	}
}

// parseReply reads one reply: its key=value lines in order, and the error
// it reports, if any.
func parseReply(br *bufio.Reader) ([][2]string, error) {
	var pairs [][2]string
	var e Error
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("reply cut short: %w", err)
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "iface":
			e.Iface = v
		case "setting":
			e.Setting = v
		case "message":
			e.Msg = v
		case "errno":
			n, err := strconv.Atoi(v)
			if err != nil {
				return nil, fmt.Errorf("bad errno line %q", line)
			}
			// The blank line after errno ends the reply.
			if _, err := br.ReadString('\n'); err != nil {
				return nil, fmt.Errorf("reply cut short: %w", err)
			}
			if n == 0 {
				return pairs, nil
			}
			e.Errno = syscall.Errno(n)
			return pairs, &e
		default:
			pairs = append(pairs, [2]string{k, v})
		}
	}
}

// decodeStatuses rebuilds what writeStatus and writeDaemon encoded.
func decodeStatuses(pairs [][2]string) (All, error) {
	var a All
	var cur *Status
	counters := map[string]uint64{}
	flush := func() error {
		if cur == nil {
			return nil
		}
		b, _ := json.Marshal(counters)
		if err := json.Unmarshal(b, &cur.Counters); err != nil {
			return err
		}
		cur.Flags, cur.FlagSet = flags(cur.Up, cur.Monitor)
		a.Interfaces = append(a.Interfaces, *cur)
		cur, counters = nil, map[string]uint64{}
		return nil
	}
	a.Daemon.Drops = map[string]uint64{}
	for _, p := range pairs {
		k, v := p[0], p[1]
		if k == "interface" {
			if err := flush(); err != nil {
				return a, err
			}
			cur = &Status{Name: v}
			continue
		}
		if strings.HasPrefix(k, "daemon") {
			if err := flush(); err != nil {
				return a, err
			}
			n, _ := strconv.ParseUint(v, 10, 64)
			switch {
			case k == "daemon_rx_packets":
				a.Daemon.RxPackets = n
			case k == "daemon_unmatched":
				a.Daemon.Unmatched = n
			case k == "daemon_kernel_drops":
				a.Daemon.KernelDrops = n
			case k == "daemon_disallowed":
				a.Daemon.Disallowed = n
			case k == "daemon_gre_allow":
				a.Daemon.GREAllow = v == "1"
			case strings.HasPrefix(k, "daemon_drop_"):
				a.Daemon.Drops[strings.TrimPrefix(k, "daemon_drop_")] = n
			}
			continue
		}
		if cur == nil {
			return a, fmt.Errorf("reply line %s=%s outside an interface", k, v)
		}
		num := func() int { n, _ := strconv.Atoi(v); return n }
		switch k {
		case "index":
			cur.Index = num()
		case "up":
			cur.Up = v == "1"
		case "monitor":
			cur.Monitor = v == "1"
		case "lladdr":
			cur.LLAddr = v
		case "mtu":
			cur.MTU = num()
		case "vnetid":
			n := num()
			cur.VNetID = &n
		case "tunnel_src":
			cur.Tunnel = &TunnelStatus{Family: "inet", Src: v}
			if strings.Contains(v, ":") {
				cur.Tunnel.Family = "inet6"
			}
		case "tunneldev":
			cur.TunnelDev = v
			if v != "" {
				if cur.Tunnel == nil {
					cur.Tunnel = &TunnelStatus{Family: "inet"}
				}
				cur.Tunnel.Dev = v
			}
		case "tunnel_dst":
			if cur.Tunnel != nil {
				cur.Tunnel.Dst = v
			}
		case "ttl":
			cur.TTL = num()
		case "df":
			cur.DF = v == "1"
		case "txprio":
			cur.TxPrio = v
		case "rxprio":
			cur.RxPrio = v
		case "span":
			cur.Spans = append(cur.Spans, v)
		case "sources_overflow":
			cur.SourcesOverflow, _ = strconv.ParseUint(v, 10, 64)
		case "source":
			src, err := parseSource(v)
			if err != nil {
				return a, err
			}
			cur.Sources = append(cur.Sources, src)
		case "tunneldomain":
			cur.TunnelDomain = v
		case "rdomain":
			cur.Rdomain = v
		default:
			if c, ok := strings.CutPrefix(k, "counter_"); ok {
				n, _ := strconv.ParseUint(v, 10, 64)
				counters[c] = n
			}
			// Unknown keys come from a newer daemon: ignore them.
		}
	}
	return a, flush()
}
