package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/l4nft/l4nft/agent/daemon"
	"github.com/l4nft/l4nft/lb"
)

func backendCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	weight := fs.Int("weight", 0, "new weight, 1-10000")
	state := fs.String("state", "", "new state: up, drain or down")
	cf := addClientFlags(fs)
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) != 2 {
			return usagef("want FARM and NAME, got %d arguments", len(args))
		}
		var ch daemon.BackendChange
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if set["weight"] {
			ch.Weight = weight
		}
		if set["state"] {
			s, err := lb.ParseBackendState(*state)
			if err != nil {
				return usagef("--state: %v", err)
			}
			ch.State = &s
		}
		if ch.Weight == nil && ch.State == nil {
			return usagef("nothing to change: give --weight and/or --state")
		}
		c, err := cf.client(e)
		if err != nil {
			return err
		}
		b, err := c.SetBackend(ctx, args[0], args[1], ch)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s/%s: weight %d, state %s (applied and saved)\n", args[0], b.Name, b.Weight, b.State)
		return nil
	}
}
