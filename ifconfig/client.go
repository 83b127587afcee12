package ifconfig

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"time"
)

// DefaultSocket is where erspand listens unless told otherwise.
const DefaultSocket = "/run/erspan/erspand.sock"

// Client speaks the control protocol to one daemon. Not safe for
// concurrent use.
type Client struct {
	conn net.Conn
	br   *bufio.Reader
}

// Dial connects to the daemon's socket. The error wraps the errno of the
// connect (ENOENT or ECONNREFUSED when no daemon listens).
func Dial(path string) (*Client, error) {
	conn, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, br: bufio.NewReader(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) do(op, arg string, lines ...string) ([][2]string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s=%s\n", op, arg)
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	// A daemon busy with a slow netlink operation answers within seconds;
	// one that does not answer in a minute is stuck.
	_ = c.conn.SetDeadline(time.Now().Add(time.Minute))
	if _, err := c.conn.Write([]byte(b.String())); err != nil {
		return nil, fmt.Errorf("send to erspand: %w", err)
	}
	return parseReply(c.br)
}

// Create creates interface name.
func (c *Client) Create(name string) error {
	_, err := c.do("create", name)
	return err
}

// Destroy destroys interface name.
func (c *Client) Destroy(name string) error {
	_, err := c.do("destroy", name)
	return err
}

// Set applies settings to interface name in order, stopping at the first
// that fails.
func (c *Client) Set(name string, settings []Setting) error {
	if len(settings) == 0 {
		return nil
	}
	lines := make([]string, len(settings))
	for i, s := range settings {
		lines[i] = s.Name + "=" + strings.Join(s.Args, " ")
	}
	_, err := c.do("set", name, lines...)
	return err
}

// AddSpan makes iface a span port of bridge.
func (c *Client) AddSpan(bridge, iface string) error {
	_, err := c.do("addspan", bridge, "interface="+iface)
	return err
}

// DelSpan removes the span port.
func (c *Client) DelSpan(bridge, iface string) error {
	_, err := c.do("delspan", bridge, "interface="+iface)
	return err
}

// Sysctl reads a daemon-wide setting, or sets it when value is not "".
func (c *Client) Sysctl(name, value string) (string, error) {
	var lines []string
	if value != "" {
		lines = append(lines, "value="+value)
	}
	pairs, err := c.do("sysctl", name, lines...)
	if err != nil {
		return "", err
	}
	for _, p := range pairs {
		if p[0] == name {
			return p[1], nil
		}
	}
	return "", fmt.Errorf("erspand sent no value for %s", name)
}

// Status returns one interface.
func (c *Client) Status(name string) (Status, error) {
	pairs, err := c.do("get", name)
	if err != nil {
		return Status{}, err
	}
	a, err := decodeStatuses(pairs)
	if err != nil {
		return Status{}, err
	}
	if len(a.Interfaces) != 1 {
		return Status{}, fmt.Errorf("erspand sent %d interfaces for %s", len(a.Interfaces), name)
	}
	return a.Interfaces[0], nil
}

// All returns every interface and the daemon's counters.
func (c *Client) All() (All, error) {
	pairs, err := c.do("get", "")
	if err != nil {
		return All{}, err
	}
	return decodeStatuses(pairs)
}
