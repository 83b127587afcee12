package ifconfig

import (
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/erspan-linux/erspan/tunnel"
)

// Setting is one ifconfig-style setting: a keyword and its arguments, as in
// `tunnel 192.0.2.2 192.0.2.1` or `-vnetid`.
type Setting struct {
	Name string
	Args []string
}

func (s Setting) String() string {
	if len(s.Args) == 0 {
		return s.Name
	}
	return s.Name + " " + strings.Join(s.Args, " ")
}

// keyword describes one setting of the grammar: its number of arguments,
// its form, and whether it is refused with EBUSY while the interface is up
// (spec/erspan.md §2, Settings and their errors).
type keyword struct {
	args  int
	usage string
	down  bool
}

// keywords is the settings grammar, shared by the command line, the
// control protocol and hostname.erspanN files (ApplyConfigDir). Names are OpenBSD
// ifconfig's (spec/erspan.md §2, Settings).
var keywords = map[string]keyword{
	"tunnel":        {2, "tunnel SRC DST", true},
	"tunneladdr":    {1, "tunneladdr SRC", true},
	"-tunnel":       {0, "-tunnel", true},
	"vnetid":        {1, "vnetid 0..1023", true},
	"-vnetid":       {0, "-vnetid", true},
	"up":            {0, "up", false},
	"down":          {0, "down", false},
	"monitor":       {0, "monitor", false},
	"-monitor":      {0, "-monitor", false},
	"tunnelttl":     {1, "tunnelttl 1..255", false},
	"tunneldf":      {0, "tunneldf", false},
	"-tunneldf":     {0, "-tunneldf", false},
	"txprio":        {1, "txprio 0..7|packet", false},
	"mtu":           {1, "mtu 46..65435", false},
	"lladdr":        {1, "lladdr MAC", false},
	"tunneldomain":  {1, "tunneldomain NETNS", true},
	"-tunneldomain": {0, "-tunneldomain", true},
	"rdomain":       {1, "rdomain NETNS", false},
	"-rdomain":      {0, "-rdomain", false},
	"tunneldev":     {1, "tunneldev IFNAME", true},
	"-tunneldev":    {0, "-tunneldev", true},
}

// Usage lists the settings, for help texts.
func Usage() []string {
	order := []string{"tunnel", "tunneladdr", "-tunnel", "vnetid", "-vnetid", "up", "down", "monitor", "-monitor",
		"tunnelttl", "tunneldf", "-tunneldf", "txprio", "mtu", "lladdr", "tunneldomain", "-tunneldomain", "rdomain", "-rdomain", "tunneldev", "-tunneldev"}
	out := make([]string, len(order))
	for i, k := range order {
		out[i] = keywords[k].usage
	}
	return out
}

// ParseSettings splits a command line's words into settings, checking each
// keyword, its number of arguments and its values as far as that needs no
// daemon (numbers, addresses, names): erspanctl refuses a typo before it
// reaches, or starts, erspand. What depends on the interface's state (up
// or down, other interfaces, namespaces and devices that exist) is checked
// when the setting is applied.
func ParseSettings(iface string, words []string) ([]Setting, error) {
	var out []Setting
	for i := 0; i < len(words); {
		w := words[i]
		kw, ok := keywords[w]
		if !ok {
			return nil, newError(syscall.EINVAL, iface, w,
				"unknown setting; the settings are: %s", strings.Join(Usage(), ", "))
		}
		if i+1+kw.args > len(words) {
			return nil, newError(syscall.EINVAL, iface, strings.Join(words[i:], " "),
				"missing argument: the form is %q", kw.usage)
		}
		st := Setting{Name: w, Args: words[i+1 : i+1+kw.args]}
		if _, err := parseValue(iface, st); err != nil {
			return nil, err
		}
		out = append(out, st)
		i += 1 + kw.args
	}
	return out, nil
}

// value is a setting's arguments, parsed.
type value struct {
	n        int              // vnetid, tunnelttl, txprio, mtu
	src, dst netip.Addr       // tunnel, tunneladdr
	mac      net.HardwareAddr // lladdr
	name     string           // tunneldomain, rdomain: the namespace ("" for the daemon's); tunneldev
}

// parseValue parses and checks the arguments of s, a setting of interface
// iface with a known keyword and the right number of arguments, with the
// checks that need no state: OpenBSD's ranges and address rules
// (spec/erspan.md §2) and what Linux accepts as names. Its errors are
// EINVAL and name iface, s and the values allowed.
func parseValue(iface string, s Setting) (value, error) {
	var v value
	invalid := func(format string, args ...any) (value, error) {
		return value{}, newError(syscall.EINVAL, iface, s.String(), format, args...)
	}
	number := func(lo, hi int) bool {
		n, err := strconv.Atoi(s.Args[0])
		v.n = n
		return err == nil && n >= lo && n <= hi
	}
	switch s.Name {
	case "tunnel", "tunneladdr":
		return parseTunnel(iface, s)
	case "vnetid":
		if !number(0, MaxSession) {
			return invalid("the session ID (vnetid) is a number from 0 to %d", MaxSession)
		}
	case "tunnelttl":
		if !number(1, 255) {
			return invalid("the tunnel TTL is a number from 1 to 255")
		}
	case "txprio":
		if s.Args[0] == "packet" {
			v.n = tunnel.TxPrioPacket
		} else if !number(0, 7) {
			return invalid("txprio is a priority from 0 to 7, or packet (the frame's own priority)")
		}
	case "mtu":
		if !number(MinMTU, MaxMTU) {
			return invalid("the MTU is a number from %d to %d", MinMTU, MaxMTU)
		}
	case "lladdr":
		mac, err := net.ParseMAC(s.Args[0])
		if err != nil || len(mac) != 6 || mac[0]&1 != 0 || isZero(mac) {
			return invalid("lladdr is a unicast Ethernet address such as fe:e1:ba:d0:12:34")
		}
		v.mac = mac
	case "tunneldomain", "rdomain":
		// OpenBSD's 0 (and "default", and the - forms) is the daemon's
		// own namespace, "".
		if ns := s.Args[0]; ns != "0" && ns != "default" {
			if ns == "" || strings.ContainsAny(ns, "/\x00") || ns == "." || ns == ".." {
				return invalid("%q is not a network namespace name", ns)
			}
			v.name = ns
		}
	case "tunneldev":
		if err := checkIfName(iface, s.Args[0], s.String()); err != nil {
			return value{}, err
		}
		v.name = s.Args[0]
	}
	return v, nil
}

// parseTunnel checks tunnel addresses as gre_set_tunnel does: both of one
// family, neither unspecified nor multicast.
func parseTunnel(name string, s Setting) (value, error) {
	var addrs [2]netip.Addr
	for i, a := range s.Args {
		ip, perr := netip.ParseAddr(a)
		if perr != nil {
			return value{}, newError(syscall.EINVAL, name, s.String(), "%q is not an IPv4 or IPv6 address", a)
		}
		ip = ip.Unmap()
		if ip.Zone() != "" {
			return value{}, newError(syscall.EINVAL, name, s.String(), "%q: scoped (zoned) addresses are not supported", a)
		}
		if ip.IsUnspecified() || ip.IsMulticast() {
			return value{}, newError(syscall.EINVAL, name, s.String(), "%s is not a unicast address", ip)
		}
		addrs[i] = ip
	}
	if addrs[1].IsValid() && addrs[0].Is4() != addrs[1].Is4() {
		return value{}, newError(syscall.EINVAL, name, s.String(),
			"the source and destination must both be IPv4 or both be IPv6")
	}
	return value{src: addrs[0], dst: addrs[1]}, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// checkIfName refuses, naming interface iface and the setting, a name no
// Linux network interface can have (tunnel.CheckLinkName's rules).
func checkIfName(iface, name, setting string) error {
	if tunnel.CheckLinkName(name) != nil {
		return newError(syscall.EINVAL, iface, setting, "%q is not a network interface name (%s)", name, tunnel.LinkNameRule)
	}
	return nil
}

// nameRE is what an interface may be called: erspan and a unit number,
// within Linux's 15-byte interface names.
var nameRE = regexp.MustCompile(`^erspan(0|[1-9][0-9]{0,8})$`)

// ValidName reports whether name is an acceptable interface name.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// CheckName returns an EINVAL error naming the rule when name is not an
// erspanN interface name.
func CheckName(name string) error {
	if !ValidName(name) {
		return newError(syscall.EINVAL, name, "",
			"interface names are erspan followed by a unit number, such as erspan0")
	}
	return nil
}
