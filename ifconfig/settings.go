package ifconfig

import (
	"regexp"
	"strings"
	"syscall"
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

// keyword describes one setting of the grammar.
type keyword struct {
	args  int
	usage string
}

// keywords is the settings grammar, shared by the command line, the
// control protocol and (later) hostname.erspanN files. Names are OpenBSD
// ifconfig's (spec/erspan.md §2, Settings).
var keywords = map[string]keyword{
	"tunnel":        {2, "tunnel SRC DST"},
	"tunneladdr":    {1, "tunneladdr SRC"},
	"-tunnel":       {0, "-tunnel"},
	"vnetid":        {1, "vnetid 0..1023"},
	"-vnetid":       {0, "-vnetid"},
	"up":            {0, "up"},
	"down":          {0, "down"},
	"monitor":       {0, "monitor"},
	"-monitor":      {0, "-monitor"},
	"tunnelttl":     {1, "tunnelttl 1..255"},
	"tunneldf":      {0, "tunneldf"},
	"-tunneldf":     {0, "-tunneldf"},
	"txprio":        {1, "txprio 0..7|packet"},
	"mtu":           {1, "mtu 46..65435"},
	"lladdr":        {1, "lladdr MAC"},
	"tunneldomain":  {1, "tunneldomain NETNS"},
	"-tunneldomain": {0, "-tunneldomain"},
	"rdomain":       {1, "rdomain NETNS"},
	"-rdomain":      {0, "-rdomain"},
	"tunneldev":     {1, "tunneldev IFNAME"},
	"-tunneldev":    {0, "-tunneldev"},
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
// keyword and its number of arguments. Values are checked when applied.
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
		out = append(out, Setting{Name: w, Args: words[i+1 : i+1+kw.args]})
		i += 1 + kw.args
	}
	return out, nil
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
