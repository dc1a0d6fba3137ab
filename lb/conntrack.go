package lb

import (
	"fmt"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
)

// flushConntrack deletes the conntrack entries of the backends with the
// given marks, in the namespace behind nsFd. Their connections' next
// packet finds no NAT binding and is answered with a reset.
func flushConntrack(nsFd int, mask uint32, marks []uint32) error {
	if len(marks) == 0 {
		return nil
	}
	c, err := conntrack.Dial(&netlink.Config{NetNS: nsFd})
	if err != nil {
		return fmt.Errorf("connecting to conntrack: %w", err)
	}
	defer c.Close()
	for _, m := range marks {
		if err := c.FlushFilter(conntrack.NewFilter().Mark(m).MarkMask(mask)); err != nil {
			return fmt.Errorf("flushing conntrack entries with mark %s: %w", markText(m), err)
		}
	}
	return nil
}
