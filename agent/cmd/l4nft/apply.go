package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
)

func applyCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	netns := fs.String("netns", "", "act inside the named network namespace (as in `ip netns`)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	dryRun := fs.Bool("dry-run", false, "print what would change (as `l4nft diff`) and change nothing")
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
		if *netns != "" {
			opts.NetNS = nft.NetNSName(*netns)
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
