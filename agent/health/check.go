package health

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
)

// DialFunc creates a connection, like net.Dialer.DialContext. The address
// is always a literal "ip:port".
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Check runs one check of spec against addr and returns nil if it passes.
// ctx bounds it; Check applies spec.Timeout on top.
func Check(ctx context.Context, dial DialFunc, spec Spec, addr netip.AddrPort) error {
	if spec.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, spec.Timeout)
		defer cancel()
	}
	switch spec.Type {
	case None:
		return nil
	case TCP:
		c, err := dial(ctx, "tcp", addr.String())
		if err != nil {
			return fmt.Errorf("tcp connect %s: %w", addr, err)
		}
		return c.Close()
	case HTTP:
		return checkHTTP(ctx, dial, spec, addr)
	default:
		return fmt.Errorf("unknown health check type %d", spec.Type)
	}
}

func checkHTTP(ctx context.Context, dial DialFunc, spec Spec, addr netip.AddrPort) error {
	tr := &http.Transport{
		DialContext:       dial,
		DisableKeepAlives: true,
		Proxy:             nil, // never through a proxy from the environment
	}
	defer tr.CloseIdleConnections()
	host := net.JoinHostPort(addr.Addr().String(), strconv.Itoa(int(addr.Port())))
	url := "http://" + host + spec.Path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("http GET %s: %w", url, err)
	}
	if spec.Host != "" {
		req.Host = spec.Host
	}
	req.Header.Set("User-Agent", "l4nft-health")
	resp, err := (&http.Client{Transport: tr, CheckRedirect: noRedirects}).Do(req)
	if err != nil {
		return fmt.Errorf("http GET %s: %w", url, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	expect := spec.Expect
	if expect == (StatusRange{}) {
		expect = DefaultExpect
	}
	if !expect.Contains(resp.StatusCode) {
		return fmt.Errorf("http GET %s: status %d, want %s", url, resp.StatusCode, expect)
	}
	return nil
}

// noRedirects makes a redirect count as the response it is.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
