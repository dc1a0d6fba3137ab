package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/l4nft/l4nft/agent/health"
	"github.com/l4nft/l4nft/lb"
)

// Validate checks c as the agent would before applying it: the options,
// the API section, every farm with lb.Validate, and every health check. It
// returns an *Error listing every problem, located in c's source.
func Validate(c *Config) error {
	problems := c.topProblems()
	problems = append(problems, c.lbProblems(lb.Validate(c.State(), c.LBOptions()))...)
	for fi := range c.Farms {
		problems = append(problems, c.healthProblems(fi)...)
	}
	return newError(problems)
}

// ValidateTop checks the fields of c other than farms.
func ValidateTop(c *Config) error {
	problems := c.lbProblems(lb.Validate(lb.State{}, c.LBOptions())) // the table's name, the mark mask
	return newError(append(problems, c.topProblems()...))
}

// ValidateFarm checks one farm on its own, with the balancer's options:
// every field and health check, but not its conflicts with other farms
// (lb.Balancer.SetFarm checks those; see LocateFarm). It costs what the
// farm holds, whatever the size of the configuration.
func ValidateFarm(f *Farm, opts lb.Options) error {
	c := &Config{Farms: []Farm{*f}, src: f.src}
	s := lb.State{Farms: []lb.Farm{f.LB()}}
	problems := c.lbProblems(lb.Validate(s, opts))
	return newError(append(problems, c.healthProblems(0)...))
}

// LocateFarm turns an error of lb.Balancer.SetFarm about f into an *Error
// whose problems point at f's lines. Other errors are returned as they
// are.
func LocateFarm(f *Farm, err error) error {
	var ve *lb.ValidationError
	if !errors.As(err, &ve) {
		return err
	}
	c := &Config{Farms: []Farm{*f}, src: f.src}
	var problems []lb.Problem
	for _, p := range ve.Problems {
		if p.Farm == f.Name {
			p.FarmIndex = 0
		} else if p.FarmIndex >= 0 {
			p.FarmIndex = len(c.Farms) // not f: no line
		}
		problems = append(problems, c.locate(p))
	}
	return newError(problems)
}

func (c *Config) topProblems() []lb.Problem {
	var problems []lb.Problem
	top := func(field, format string, args ...any) {
		problems = append(problems, ProblemAt(c.src, c.pos.lookup(field), field, fmt.Sprintf(format, args...)))
	}
	if a := c.API; a.Listen != "" {
		host, port, err := net.SplitHostPort(a.Listen)
		if _, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil {
			top("api.listen", "%q is not host:port", a.Listen)
		} else if a.TokenFile == "" {
			top("api.listen", "a TCP listener requires api.token_file")
		} else if ip, err := netip.ParseAddr(host); (err != nil || !ip.IsLoopback()) && host != "localhost" && (a.TLSCert == "" || a.TLSKey == "") {
			top("api.listen", "%q is not a loopback address: api.tls_cert and api.tls_key are required", a.Listen)
		}
	}
	if (c.API.TLSCert == "") != (c.API.TLSKey == "") {
		top("api.tls_cert", "api.tls_cert and api.tls_key go together")
	}
	return problems
}

// lbProblems locates the problems of err, an error of lb.Validate about
// c's farms.
func (c *Config) lbProblems(err error) []lb.Problem {
	var ve *lb.ValidationError
	if errors.As(err, &ve) {
		problems := make([]lb.Problem, 0, len(ve.Problems))
		for _, p := range ve.Problems {
			problems = append(problems, c.locate(p))
		}
		return problems
	} else if err != nil {
		return []lb.Problem{ProblemAt(c.src, 0, "", err.Error())}
	}
	return nil
}

// healthProblems checks the health checks of c.Farms[fi].
func (c *Config) healthProblems(fi int) []lb.Problem {
	var problems []lb.Problem
	f := &c.Farms[fi]
	seen := map[string]bool{}
	for bi, b := range f.Backends {
		spec, target, err := f.HealthSpec(b)
		if err != nil {
			continue // reported by the parser
		}
		checkProblems := spec.Problems()
		if spec.Type != health.None && target.Port() == 0 {
			// A farm of every protocol has no port of its own, and
			// its backends none either.
			checkProblems = append(checkProblems, lb.Problem{Field: "port", Message: "protocol all has no port to check: set health.port"})
		}
		for _, pr := range checkProblems {
			field := "health." + pr.Field
			farmLevel := b.Health == nil || !setsField(b.Health, pr.Field)
			p := lb.Problem{Farm: f.Name, FarmIndex: fi, Backend: b.Name, BackendIndex: bi, Field: field, Message: pr.Message}
			if farmLevel {
				p.Backend, p.BackendIndex = "", -1
			}
			loc := c.locate(p)
			if path := loc.Path(); !seen[path] {
				seen[path] = true
				problems = append(problems, loc)
			}
		}
	}
	return problems
}

// setsField reports whether h sets the health field named field.
func setsField(h *Health, field string) bool {
	switch field {
	case "type":
		return h.Type != ""
	case "interval":
		return h.Interval != 0
	case "timeout":
		return h.Timeout != 0 || h.Interval != 0 // a short interval makes the timeout too long
	case "rise":
		return h.Rise != 0
	case "fall":
		return h.Fall != 0
	case "path":
		return h.Path != ""
	case "port":
		return h.Port != 0
	}
	return false
}

// locate gives an lb.Problem about c its file and line.
func (c *Config) locate(p lb.Problem) lb.Problem {
	out := p
	out.File = c.src
	if p.Field == "mark_mask" { // an option, under options: in the file
		p.Field = "options.mark_mask"
		out.Field = p.Field
	}
	if p.FarmIndex < 0 || p.FarmIndex >= len(c.Farms) {
		out.Line = c.pos.lookup(p.Field)
		if out.Line == 0 {
			out.Line = c.pos.lookup("farms")
		}
		return out
	}
	f := c.Farms[p.FarmIndex]
	if f.src != "" {
		out.File = f.src
	}
	rel := p.Field
	if p.BackendIndex >= 0 {
		rel = fmt.Sprintf("backends[%d]", p.BackendIndex)
		if p.Field != "" {
			rel += "." + p.Field
		}
	}
	out.Line = f.pos.lookup(rel)
	return out
}
