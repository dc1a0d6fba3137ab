package integration_test

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// askFromBalancer connects to dst from the balancer namespace itself and
// returns the first word of the reply: the backend's name.
func askFromBalancer(t *testing.T, bed *testbed.Topology, dst string) (string, error) {
	t.Helper()
	var conn net.Conn
	err := bed.Balancer.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", dst, 2*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.Fields(line)[0], nil
}

func TestLocalConnections(t *testing.T) {
	for _, local := range []bool{false, true} {
		name := map[bool]string{false: "not balanced by default", true: "balanced with LocalConnections"}[local]
		t.Run(name, func(t *testing.T) {
			bed := mustBed(t, testbed.Options{})
			// The VIP is local, so an unbalanced connection is refused at once.
			if err := bed.Balancer.AddVIP(vip4); err != nil {
				t.Fatal(err)
			}
			b := mustOpen(t, bed, lb.Options{LocalConnections: local})
			mustApply(t, b, lb.State{Farms: []lb.Farm{farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))}})
			seen := map[string]int{}
			for range 40 {
				backend, err := askFromBalancer(t, bed, ap(vip4, 80).String())
				if err != nil {
					if local {
						t.Fatalf("local connection failed: %v", err)
					}
					continue
				}
				seen[backend]++
			}
			if !local && len(seen) > 0 {
				t.Errorf("local connections reached backends %v without LocalConnections", seen)
			}
			if local && (seen[bed.Backends[0].Name()] == 0 || seen[bed.Backends[1].Name()] == 0) {
				t.Errorf("40 local connections reached %v, want both backends", seen)
			}
			// Traffic through the balancer is balanced either way.
			res := bed.Clients[0].Spread(testContext(t), "tcp", ap(vip4, 80), 100, 4)
			if res.Errors > 0 {
				t.Errorf("forwarded connections: %s", res)
			}
		})
	}
}
