package tunnel

import (
	"fmt"
	"strings"
	"syscall"
)

// CheckLinkName returns an error wrapping EINVAL for a name no Linux
// network interface can have, or that netlink would silently cut to 15
// bytes, or that the kernel would take as a template ("tap%d").
func CheckLinkName(name string) error {
	const ifNameSize = 16 // IFNAMSIZ, with the terminating NUL
	if name == "" || len(name) >= ifNameSize || name == "." || name == ".." ||
		strings.ContainsAny(name, "%/: \t\n\x00") {
		return fmt.Errorf("invalid link name %q: %w", name, syscall.EINVAL)
	}
	return nil
}
