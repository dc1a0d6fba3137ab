package health

import (
	"context"
	"net"

	"github.com/l4nft/l4nft/nft"
)

// NetNSDialer returns a DialFunc whose sockets are created in the network
// namespace behind nsFd, which must stay open while the DialFunc is in use.
// Each dial runs on an OS thread switched into the namespace for the dial
// (nft.RunInNetNS); the socket stays there afterwards.
func NetNSDialer(nsFd int) DialFunc {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := nft.RunInNetNS(nft.NetNSFd(nsFd), func() error {
			// The address is a literal: nothing is resolved in the namespace.
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, address)
			return err
		})
		if err != nil && c != nil {
			c.Close()
			c = nil
		}
		return c, err
	}
}
