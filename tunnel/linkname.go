package tunnel

import (
	"fmt"
	"strings"
	"syscall"
)

// LinkNameRule says in words what CheckLinkName accepts.
const LinkNameRule = "1 to 15 bytes, none of % / : or white space, not . or .."

// CheckLinkName returns an error wrapping EINVAL for a name no Linux
// network interface can have, or that netlink would silently cut to 15
// bytes, or that the kernel would take as a template ("tap%d").
func CheckLinkName(name string) error {
	const ifNameSize = 16 // IFNAMSIZ, with the terminating NUL
	if name == "" || len(name) >= ifNameSize || name == "." || name == ".." ||
		strings.ContainsAny(name, "%/: \t\n\x00") {
		return fmt.Errorf("invalid link name %q (%s): %w", name, LinkNameRule, syscall.EINVAL)
	}
	return nil
}
