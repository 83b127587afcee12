// Command erspanctl configures erspanN interfaces, ifconfig-style, through
// erspand (which it starts when none answers).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/erspan-linux/erspan/ifconfig"
)

func main() {
	app := &cli.App{
		Name:  "erspanctl",
		Usage: "configure erspan(4) interfaces",
		UsageText: "erspanctl [--socket PATH] [-j] create erspanN [SETTING...]\n" +
			"erspanctl [--socket PATH] [-j] erspanN [SETTING...]\n" +
			"erspanctl [--socket PATH] destroy erspanN\n" +
			"erspanctl [--socket PATH] BRIDGE addspan|delspan erspanN\n" +
			"erspanctl [--socket PATH] sysctl net.inet.gre.allow[=0|1]\n" +
			"erspanctl [--socket PATH] [-j]\n\n" +
			"SETTING: " + strings.Join(ifconfig.Usage(), " | "),
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Value: ifconfig.DefaultSocket, EnvVars: []string{"ERSPAN_SOCKET"}, Usage: "erspand's control socket `PATH`"},
			&cli.BoolFlag{Name: "j", Usage: "print JSON"},
			&cli.BoolFlag{Name: "no-autostart", Usage: "do not start erspand when none answers"},
		},
		HideHelpCommand: true,
		Action:          run,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "erspanctl:", err)
		os.Exit(1)
	}
}

// command is what the arguments ask of erspand.
type command func(cl *ifconfig.Client, jsonOut bool) error

func run(c *cli.Context) error {
	// Arguments are checked before erspand is reached (or started): a
	// typo must not start a daemon.
	cmd, err := parse(c.Args().Slice())
	if err != nil {
		return err
	}
	cl, err := ifconfig.DialOrStart(c.String("socket"), !c.Bool("no-autostart"))
	if err != nil {
		return err
	}
	defer cl.Close()
	return cmd(cl, c.Bool("j"))
}

// parse checks the arguments as far as can be done without erspand and
// returns the command they make.
func parse(args []string) (command, error) {
	if len(args) == 0 {
		return show((*ifconfig.Client).All, ifconfig.WriteAll), nil
	}
	switch args[0] {
	case "create":
		if len(args) < 2 {
			return nil, fmt.Errorf("create needs an interface name: erspanctl create erspanN [SETTING...]")
		}
		name := args[1]
		if err := ifconfig.CheckName(name); err != nil {
			return nil, err
		}
		settings, err := ifconfig.ParseSettings(name, args[2:])
		if err != nil {
			return nil, err
		}
		return func(cl *ifconfig.Client, _ bool) error {
			if err := cl.Create(name); err != nil {
				return err
			}
			return cl.Set(name, settings)
		}, nil
	case "sysctl":
		if len(args) != 2 {
			return nil, fmt.Errorf("usage: erspanctl sysctl net.inet.gre.allow[=0|1]")
		}
		name, value, _ := strings.Cut(args[1], "=")
		if err := ifconfig.CheckSysctl(name, value); err != nil {
			return nil, err
		}
		return func(cl *ifconfig.Client, _ bool) error {
			v, err := cl.Sysctl(name, value)
			if err != nil {
				return err
			}
			fmt.Println(v)
			return nil
		}, nil
	case "destroy":
		if len(args) != 2 {
			return nil, fmt.Errorf("usage: erspanctl destroy erspanN")
		}
		if err := ifconfig.CheckName(args[1]); err != nil {
			return nil, err
		}
		return func(cl *ifconfig.Client, _ bool) error { return cl.Destroy(args[1]) }, nil
	}
	name := args[0]
	if len(args) > 1 && (args[1] == "addspan" || args[1] == "delspan") {
		// OpenBSD: ifconfig bridge0 addspan erspan0.
		if len(args) != 3 {
			return nil, fmt.Errorf("usage: erspanctl %s %s erspanN", name, args[1])
		}
		if err := ifconfig.CheckSpan(name, args[1], args[2]); err != nil {
			return nil, err
		}
		if args[1] == "addspan" {
			return func(cl *ifconfig.Client, _ bool) error { return cl.AddSpan(name, args[2]) }, nil
		}
		return func(cl *ifconfig.Client, _ bool) error { return cl.DelSpan(name, args[2]) }, nil
	}
	if !ifconfig.ValidName(name) {
		return nil, fmt.Errorf("%q is neither a command (create, destroy, sysctl) nor an interface name (erspanN)", name)
	}
	if len(args) > 1 {
		settings, err := ifconfig.ParseSettings(name, args[1:])
		if err != nil {
			return nil, err
		}
		return func(cl *ifconfig.Client, _ bool) error { return cl.Set(name, settings) }, nil
	}
	status := func(cl *ifconfig.Client) (ifconfig.Status, error) { return cl.Status(name) }
	return show(status, ifconfig.WriteStatus), nil
}

// show is the command that gets a report from erspand and prints it, as
// text or JSON.
func show[T any](get func(*ifconfig.Client) (T, error), write func(io.Writer, *T)) command {
	return func(cl *ifconfig.Client, jsonOut bool) error {
		v, err := get(cl)
		if err != nil {
			return err
		}
		if jsonOut {
			return printJSON(v)
		}
		write(os.Stdout, &v)
		return nil
	}
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
