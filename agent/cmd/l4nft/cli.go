package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"

	"github.com/l4nft/l4nft/agent/config"
)

// env is what a command may use of the outside world, injected so that
// commands run in-process in tests.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	// notify is signal.Notify; stop is signal.Stop.
	notify func(chan<- os.Signal, ...os.Signal)
	stop   func(chan<- os.Signal)
}

func newEnv() *env {
	return &env{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, notify: signal.Notify, stop: signal.Stop}
}

// command is one subcommand.
type command struct {
	name    string
	args    string // synopsis after the name
	summary string
	// setup declares the command's flags on fs and returns the function
	// that runs it with the positional arguments.
	setup func(fs *flag.FlagSet) func(ctx context.Context, e *env, args []string) error
}

func commands() []command {
	return []command{
		{"demo", "", "build a sandbox of namespaces and show a farm balancing real traffic (needs root)", demoCmd},
		{"run", "--config FILE [--netns NAME]", "run the agent: apply the file, keep the kernel matching it, serve the API", runCmd},
		{"apply", "FILE|DIR [--netns NAME] [--dry-run]", "make the kernel match FILE once, atomically, and exit", applyCmd},
		{"diff", "FILE|DIR [--netns NAME]", "show what apply would change in the kernel; exit 0 if nothing, 1 if something, 2 on error", diffCmd},
		{"validate", "FILE", "check FILE and list every problem with its line", validateCmd},
		{"render", "FILE", "print the nftables ruleset FILE gives, without touching the kernel", renderCmd},
		{"status", "[--json]", "show farms, backends, health and counters of the running agent", statusCmd},
		{"backend", "FARM NAME (--weight N | --state up|drain|down)", "change one backend through the running agent", backendCmd},
		{"check", "[--socket PATH] [--timeout 2s]", "exit 0 if the agent runs and the kernel matches it, else 1 with the reason (keepalived track_script)", checkCmd},
	}
}

// usageError makes the command exit 2 after printing its usage.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// exitError makes the command exit with code after it printed its output.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// run runs the command line args and returns the exit code: 0 ok, 1
// runtime error, 2 usage.
func run(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		mainUsage(e.stderr)
		return 2
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 && name == "help" {
			return run(ctx, e, []string{rest[0], "-help"})
		}
		mainUsage(e.stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name == name {
			return c.exec(ctx, e, rest)
		}
	}
	fmt.Fprintf(e.stderr, "l4nft: unknown command %q\n\n", name)
	mainUsage(e.stderr)
	return 2
}

func mainUsage(w io.Writer) {
	fmt.Fprintln(w, "l4nft: an nftables layer-4 load balancer agent.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "usage: l4nft COMMAND [flags] [args]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, `Run "l4nft COMMAND -help" for a command's flags. New here? "sudo l4nft demo".`)
}

func (c command) usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: l4nft %s %s\n\n%s.\n", c.name, c.args, upperFirst(c.summary))
	var flags bytes.Buffer
	fs.SetOutput(&flags)
	fs.PrintDefaults()
	if flags.Len() > 0 {
		fmt.Fprintf(w, "\nflags:\n%s", flags.String())
	}
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func (c command) exec(ctx context.Context, e *env, args []string) int {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	runFn := c.setup(fs)
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		c.usage(e.stdout, fs)
		return 0
	}
	if err == nil {
		err = runFn(ctx, e, pos)
	}
	var ue usageError
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue) || isFlagError(err):
		fmt.Fprintf(e.stderr, "l4nft %s: %v\n", c.name, err)
		c.usage(e.stderr, fs)
		return 2
	default:
		printError(e.stderr, "l4nft "+c.name, err)
		return 1
	}
}

// flagErr marks errors from flag parsing.
type flagErr struct{ error }

func isFlagError(err error) bool {
	var fe flagErr
	return errors.As(err, &fe)
}

// parseInterspersed parses flags anywhere among the positional arguments,
// as in "l4nft apply FILE --netns NAME"; "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if i := indexOf(args, "--"); i >= 0 {
			if err := fs.Parse(args[:i]); err != nil {
				return nil, wrapFlagErr(err)
			}
			pos = append(pos, fs.Args()...)
			return append(pos, args[i+1:]...), nil
		}
		if err := fs.Parse(args); err != nil {
			return nil, wrapFlagErr(err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func wrapFlagErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return flagErr{err}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// printError prints err; a configuration error one problem per line.
func printError(w io.Writer, prefix string, err error) {
	if ps := config.Problems(err); ps != nil {
		for _, p := range ps {
			fmt.Fprintln(w, p.String())
		}
		noun := "problems"
		if len(ps) == 1 {
			noun = "problem"
		}
		fmt.Fprintf(w, "%s: %d %s found\n", prefix, len(ps), noun)
		return
	}
	fmt.Fprintf(w, "%s: %v\n", prefix, err)
}

// oneArg checks a command got exactly one positional argument.
func oneArg(args []string, what string) (string, error) {
	switch len(args) {
	case 0:
		return "", usagef("missing %s", what)
	case 1:
		return args[0], nil
	default:
		return "", usagef("unexpected arguments %q", args[1:])
	}
}

// newLogger returns a slog logger writing format ("text" or "json") at
// level to w.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("invalid --log-level %q (want debug, info, warn or error)", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, usagef("invalid --log-format %q (want text or json)", format)
	}
}
