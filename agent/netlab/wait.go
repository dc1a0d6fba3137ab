package netlab

import (
	"context"
	"fmt"
	"time"
)

// Eventually calls cond every interval until it returns nil or ctx is done
// (DefaultTimeout if ctx has no deadline). The error then names the context's
// error and wraps cond's last error.
func Eventually(ctx context.Context, interval time.Duration, cond func(context.Context) error) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		err := cond(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("condition not met: %w (last: %w)", context.Cause(ctx), err)
		case <-t.C:
		}
	}
}
