// Command erspanctl configures erspanN interfaces, ifconfig-style, through
// erspand (which it starts when none answers).
package main

import (
	"encoding/json"
	"fmt"
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

func run(c *cli.Context) error {
	args := c.Args().Slice()
	cl, err := ifconfig.DialOrStart(c.String("socket"), !c.Bool("no-autostart"))
	if err != nil {
		return err
	}
	defer cl.Close()
	jsonOut := c.Bool("j")
	if len(args) == 0 {
		a, err := cl.All()
		if err != nil {
			return err
		}
		if jsonOut {
			return printJSON(a)
		}
		ifconfig.WriteAll(os.Stdout, &a)
		return nil
	}
	switch args[0] {
	case "create":
		if len(args) < 2 {
			return fmt.Errorf("create needs an interface name: erspanctl create erspanN [SETTING...]")
		}
		name := args[1]
		settings, err := ifconfig.ParseSettings(name, args[2:])
		if err != nil {
			return err
		}
		if err := cl.Create(name); err != nil {
			return err
		}
		return cl.Set(name, settings)
	case "sysctl":
		if len(args) != 2 {
			return fmt.Errorf("usage: erspanctl sysctl net.inet.gre.allow[=0|1]")
		}
		name, value, _ := strings.Cut(args[1], "=")
		v, err := cl.Sysctl(name, value)
		if err != nil {
			return err
		}
		fmt.Println(v)
		return nil
	case "destroy":
		if len(args) != 2 {
			return fmt.Errorf("usage: erspanctl destroy erspanN")
		}
		return cl.Destroy(args[1])
	}
	name := args[0]
	if len(args) == 3 && (args[1] == "addspan" || args[1] == "delspan") {
		// OpenBSD: ifconfig bridge0 addspan erspan0.
		if args[1] == "addspan" {
			return cl.AddSpan(name, args[2])
		}
		return cl.DelSpan(name, args[2])
	}
	if !ifconfig.ValidName(name) {
		return fmt.Errorf("%q is neither a command (create, destroy) nor an interface name (erspanN)", name)
	}
	if len(args) > 1 {
		settings, err := ifconfig.ParseSettings(name, args[1:])
		if err != nil {
			return err
		}
		return cl.Set(name, settings)
	}
	s, err := cl.Status(name)
	if err != nil {
		return err
	}
	if jsonOut {
		return printJSON(s)
	}
	ifconfig.WriteStatus(os.Stdout, &s)
	return nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
