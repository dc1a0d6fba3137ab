package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/l4nft/l4nft/lb"
)

// Validate checks c as the agent would before applying it: the options,
// the API section, every farm with lb.Validate, and every health check. It
// returns an *Error listing every problem, located in c's source.
func Validate(c *Config) error {
	var problems []Problem
	top := func(field, format string, args ...any) {
		problems = append(problems, Problem{File: c.src, Line: c.pos.lookup(field), Path: field, Message: fmt.Sprintf(format, args...)})
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

	var ve *lb.ValidationError
	if err := lb.Validate(c.State(), c.LBOptions()); errors.As(err, &ve) {
		for _, p := range ve.Problems {
			problems = append(problems, c.locate(p))
		}
	} else if err != nil {
		top("", "%v", err)
	}

	for fi, f := range c.Farms {
		seen := map[string]bool{}
		for bi, b := range f.Backends {
			spec, _, err := f.HealthSpec(b)
			if err != nil {
				continue // reported by the parser
			}
			for _, pr := range spec.Problems() {
				field := "health." + pr[0]
				farmLevel := b.Health == nil || !setsField(b.Health, pr[0])
				p := lb.Problem{Farm: f.Name, FarmIndex: fi, Backend: b.Name, BackendIndex: bi, Field: field, Message: pr[1]}
				if farmLevel {
					p.Backend, p.BackendIndex = "", -1
				}
				loc := c.locate(p)
				if !seen[loc.Path] {
					seen[loc.Path] = true
					problems = append(problems, loc)
				}
			}
		}
	}
	return newError(problems)
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
	}
	return false
}

// locate turns an lb.Problem about c into a Problem with file and line.
func (c *Config) locate(p lb.Problem) Problem {
	out := Problem{File: c.src, Path: p.Path(), Message: p.Message}
	if p.Field == "mark_mask" { // an option, under options: in the file
		p.Field = "options.mark_mask"
		out.Path = p.Field
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
