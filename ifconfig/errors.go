// Package ifconfig is erspand's control plane: the settings of erspan(4)
// with OpenBSD's names, defaults, rules and errnos (spec/erspan.md §2), the
// line-text control protocol spoken over the daemon's unix socket, the
// client erspanctl uses, and the ifconfig-style and JSON output.
package ifconfig

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Error is a failed operation: the errno a kernel driver would return, the
// interface and setting it concerns, and what to do about it. It wraps its
// cause, and errors.Is(err, unix.EBUSY) works on it.
type Error struct {
	Errno   syscall.Errno
	Iface   string // e.g. "erspan0"; empty for daemon-wide operations
	Setting string // the setting as the user wrote it, e.g. "vnetid 2000"
	Msg     string // why, and what to do
	Err     error  // cause, if any
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Iface)
	if e.Setting != "" {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(e.Setting)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	fmt.Fprintf(&b, "%s (%s)", e.Errno.Error(), ErrnoName(e.Errno))
	if e.Msg != "" {
		b.WriteString(": ")
		b.WriteString(e.Msg)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap exposes both the errno and the cause to errors.Is and errors.As.
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Errno, e.Err}
	}
	return []error{e.Errno}
}

// ErrnoName is the symbolic name of an errno, such as "EBUSY".
func ErrnoName(e syscall.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return fmt.Sprintf("errno %d", int(e))
}

func newError(errno syscall.Errno, iface, setting, format string, args ...any) *Error {
	return &Error{Errno: errno, Iface: iface, Setting: setting, Msg: fmt.Sprintf(format, args...)}
}

// asError turns a failure of the data path into an Error, keeping the errno
// the failing system call returned (EIO when there is none).
func asError(err error, iface, setting string) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	errno := syscall.EIO
	var en syscall.Errno
	if errors.As(err, &en) {
		errno = en
	}
	return &Error{Errno: errno, Iface: iface, Setting: setting, Err: err}
}
