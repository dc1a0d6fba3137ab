package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/l4nft/l4nft/agent/daemon"
	"github.com/l4nft/l4nft/lb"
)

func statusCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	asJSON := fs.Bool("json", false, "print the status as JSON")
	cf := addClientFlags(fs)
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) > 0 {
			return usagef("unexpected arguments %q", args)
		}
		c, err := cf.client(e)
		if err != nil {
			return err
		}
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		}
		// Buffered: tabwriter writes every cell on its own, half a
		// million write calls for 10,000 farms.
		w := bufio.NewWriterSize(e.stdout, 64<<10)
		printStatus(w, st, time.Now())
		if err := w.Flush(); err != nil {
			return err
		}
		return nil
	}
}

func printStatus(w io.Writer, st daemon.Status, now time.Time) {
	where := "own network namespace"
	if st.NetNS != "" {
		where = "network namespace " + st.NetNS
	}
	fmt.Fprintf(w, "table %s in the agent's %s, config %s, up %s\n", st.Table, where, st.Config, now.Sub(st.StartedAt).Round(time.Second))
	if lc := st.LastChange; !lc.Time.IsZero() {
		what := fmt.Sprintf("%d messages in %s", lc.Messages, lc.Duration.Round(time.Microsecond))
		if lc.Rebuilt {
			what += ", table rebuilt"
		}
		fmt.Fprintf(w, "last change %s ago (%s): %s\n", now.Sub(lc.Time).Round(time.Second), lc.Reason, what)
	}
	if la := st.LastApply; !la.Time.IsZero() {
		fmt.Fprintf(w, "kernel checked %s ago (%s); %d changes, %d rebuilds since start\n",
			now.Sub(la.Time).Round(time.Second), la.Reason, st.Changes, st.Rebuilds)
	}
	if st.ApplyError != "" {
		fmt.Fprintf(w, "APPLY FAILING: %s\n", st.ApplyError)
	}
	if ce := st.ConfigError; ce != nil {
		fmt.Fprintf(w, "CONFIG REJECTED %s ago, still running the previous one:\n", now.Sub(ce.Time).Round(time.Second))
		if len(ce.Problems) == 0 {
			fmt.Fprintf(w, "  %s\n", ce.Message)
		}
		for _, p := range ce.Problems {
			fmt.Fprintf(w, "  %s\n", p)
		}
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FARM\tVIRTUAL\tPROTO\tMODE\tSCHEDULER\tPERSIST\tREJECTED\tBACKEND\tTARGET\tWEIGHT\tSTATE\tHEALTH\tACTIVE\tCONNS\tPACKETS\tBYTES")
	for _, f := range st.Farms {
		ports := make([]string, len(f.Ports))
		for i, p := range f.Ports {
			ports[i] = p.String()
		}
		virtual := f.Address.String() // a farm of every protocol has no ports
		if len(ports) > 0 {
			virtual = hostPort(f.Address, strings.Join(ports, ","))
		}
		mode := f.Mode.String()
		if f.Mode == lb.NAT && f.Source.IsValid() {
			mode += " src " + f.Source.String()
		}
		sched, persist, rejected := schedulerText(f.Farm), persistText(f.FarmStatus), rejectedText(f.FarmStatus)
		if len(f.Backends) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t-\t\t\t\t\t\t%d\t%d\t%d\n", f.Name, virtual, f.Protocol, mode, sched, persist,
				rejected, f.Connections, f.Packets, f.Bytes)
		}
		for i, b := range f.Backends {
			name, virt, proto, md, sc, ps, rj := f.Name, virtual, f.Protocol.String(), mode, sched, persist, rejected
			if i > 0 {
				name, virt, proto, md, sc, ps, rj = "", "", "", "", "", "", ""
			}
			target := b.Address.String()
			if b.Port != 0 {
				target = hostPort(b.Address, strconv.Itoa(int(b.Port)))
			}
			hs := "-"
			if h := b.Health; h != nil {
				hs = fmt.Sprintf("%s %s", h.Type, map[bool]string{true: "ok", false: "FAIL"}[h.Healthy])
			}
			active := b.Effective.String()
			if !b.Installed {
				active = "absent"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%d\t%d\t%d\n", name, virt, proto, md, sc, ps, rj,
				b.Name, target, b.Weight, b.State, hs, active, b.Connections, b.Packets, b.Bytes)
		}
	}
	tw.Flush()
}

// schedulerText is the farm's scheduler, with the fields it hashes when
// they are given: "weight", "hash src_ip,dst_port".
func schedulerText(f lb.Farm) string {
	s := f.Scheduler.String()
	if len(f.HashFields) > 0 {
		fields := make([]string, len(f.HashFields))
		for i, h := range f.HashFields {
			fields[i] = h.String()
		}
		s += " " + strings.Join(fields, ",")
	}
	return s
}

// persistText is "-" for a farm without persistence, else its live
// entries, key and TTL: "42 src_ip 5m0s".
func persistText(f lb.FarmStatus) string {
	p := f.Persistence
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%d %s %s", f.PersistenceEntries, p.By, p.TTL)
}

// rejectedText is "-" for a farm that counts no rejections (no deny or
// allow list, limits or tcp_strict), else the new connections it refused
// and, when there are any, how many for each reason in the order the farm
// checks them: "0", "12 denied=2,rate=10".
func rejectedText(f lb.FarmStatus) string {
	l := f.Limits
	if len(f.Deny) == 0 && len(f.Allow) == 0 && !f.TCPStrict &&
		(l == nil || l.NewPerSecond == 0 && l.NewPerClientPerSecond == 0 && l.EstablishedPerClient == 0) {
		return "-"
	}
	r := f.Rejected
	var total uint64
	var parts []string
	for _, c := range []struct {
		reason string
		n      uint64
	}{{"denied", r.Denied}, {"not_allowed", r.NotAllowed}, {"rate", r.Rate}, {"client_rate", r.ClientRate},
		{"client_connections", r.ClientConnections}, {"invalid", r.Invalid}} {
		if c.n > 0 {
			total += c.n
			parts = append(parts, c.reason+"="+strconv.FormatUint(c.n, 10))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	return strconv.FormatUint(total, 10) + " " + strings.Join(parts, ",")
}

func hostPort(a netip.Addr, port string) string {
	if a.Is6() && !a.Is4In6() {
		return "[" + a.String() + "]:" + port
	}
	return a.String() + ":" + port
}
