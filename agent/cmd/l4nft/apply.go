package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/agent/daemon"
	"github.com/l4nft/l4nft/lb"
)

func applyCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	netns := fs.String("netns", "", "act inside the named network namespace (as in `ip netns`)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	dryRun := fs.Bool("dry-run", false, "print what would change (as `l4nft diff`) and change nothing")
	runDir := fs.String("run-dir", daemon.DefaultRunDir, "directory of the instance locks and state files (as `l4nft run`)")
	return func(ctx context.Context, e *env, args []string) error {
		file, err := oneArg(args, "FILE")
		if err != nil {
			return err
		}
		if *dryRun {
			ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
			defer stop()
			p, _, err := planFile(ctx, file, *netns)
			if err != nil {
				return err
			}
			printPlan(e.stdout, p)
			return nil
		}
		log, err := newLogger(e.stderr, *logFormat, *logLevel)
		if err != nil {
			return err
		}
		c, err := config.Load(file)
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		opts := c.LBOptions()
		opts.Logger = log
		// Like the daemon, apply holds the namespace and table's
		// instance lock (a running agent would undo what it sends), and
		// keeps the balancer's state file beside it.
		var nsFile *os.File
		where := "this network namespace"
		if *netns != "" {
			if nsFile, err = os.Open(filepath.Join("/run/netns", *netns)); err != nil {
				return fmt.Errorf("opening network namespace %q: %w", *netns, err)
			}
			defer nsFile.Close()
			opts.NetNS = lb.NetNSFd(int(nsFile.Fd()))
			where = fmt.Sprintf("network namespace %q", *netns)
		}
		lock, err := daemon.LockInstance(*runDir, nsFile, c.TableName(), where)
		if err != nil {
			return err
		}
		defer lock.Release()
		if opts.StateFile, err = daemon.StateFile(*runDir, nsFile, c.TableName()); err != nil {
			return err
		}
		b, err := lb.Open(ctx, opts)
		if err != nil {
			return err
		}
		defer b.Close()
		// Health is the agent's business: apply applies the states written.
		res, err := b.Apply(ctx, c.State())
		if err != nil {
			return err
		}
		switch {
		case !res.Changed:
			fmt.Fprintf(e.stdout, "%s: the kernel already matches (%d farms); nothing sent\n", file, len(c.Farms))
		case res.Rebuilt:
			fmt.Fprintf(e.stdout, "%s: table %s built: %d farms in one transaction of %d messages (%s)\n",
				file, opts.Table, len(c.Farms), res.Messages, res.Duration.Round(10e3))
		default:
			fmt.Fprintf(e.stdout, "%s: %d farms applied: %d messages, %d elements changed in one transaction (%s)\n",
				file, len(c.Farms), res.Messages, res.Elements, res.Duration.Round(10e3))
		}
		return nil
	}
}
