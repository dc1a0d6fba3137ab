package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/lb"
)

func renderCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		file, err := oneArg(args, "FILE")
		if err != nil {
			return err
		}
		c, err := config.Load(file)
		if err != nil {
			return err
		}
		text, err := lb.Render(c.State(), c.LBOptions())
		if err != nil {
			return err
		}
		fmt.Fprint(e.stdout, text)
		return nil
	}
}
