package config

import (
	"cmp"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/l4nft/l4nft/lb"
)

// Problems are reported as lb.Problem, located in their source (File and
// Line), in an *lb.ValidationError: the one type the library, the files,
// the API and the CLI share.

// ProblemAt returns the problem message about the field at path (such as
// farms[web].backends[app0].weight, api.listen or "" for the whole
// source), found at line of file. The farm and backend a path names are
// split out, so that the problem reads as one lb reports.
func ProblemAt(file string, line int, path, message string) lb.Problem {
	p := lb.Problem{File: file, Line: line, FarmIndex: -1, BackendIndex: -1, Field: path, Message: message}
	rest, ok := strings.CutPrefix(path, "farms[")
	if !ok {
		return p
	}
	end := strings.IndexByte(rest, ']')
	if end < 0 {
		return p
	}
	p.Farm, p.FarmIndex = splitLabel(rest[:end])
	rest = strings.TrimPrefix(rest[end+1:], ".")
	if b, ok := strings.CutPrefix(rest, "backends["); ok {
		if end := strings.IndexByte(b, ']'); end >= 0 {
			p.Backend, p.BackendIndex = splitLabel(b[:end])
			rest = strings.TrimPrefix(b[end+1:], ".")
		}
	}
	p.Field = rest
	return p
}

// splitLabel turns a path's label back into a name or an index: an
// object without a name is labelled by its index.
func splitLabel(l string) (string, int) {
	if i, err := strconv.Atoi(l); err == nil && i >= 0 && strconv.Itoa(i) == l {
		return "", i
	}
	return l, 0
}

// newError sorts problems by file and line and returns them as an
// *lb.ValidationError, or nil when there are none.
func newError(problems []lb.Problem) error {
	if len(problems) == 0 {
		return nil
	}
	slices.SortStableFunc(problems, func(a, b lb.Problem) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line))
	})
	return &lb.ValidationError{Problems: problems}
}

// Problems returns the problems of err when it is an *lb.ValidationError
// (as every error of this package that rejects a configuration is), else
// nil.
func Problems(err error) []lb.Problem {
	if ve, ok := asValidation(err); ok {
		return ve.Problems
	}
	return nil
}

// positions maps a field path relative to an object ("" for the object
// itself, "ports[1]", "backends[0].weight") to its line.
type positions map[string]int

// lookup returns the line of rel, or of the closest enclosing field known.
func (p positions) lookup(rel string) int {
	for {
		if l, ok := p[rel]; ok {
			return l
		}
		switch {
		case rel == "":
			return 0
		case strings.HasSuffix(rel, "]"):
			rel = rel[:strings.LastIndexByte(rel, '[')]
		case strings.Contains(rel, "."):
			rel = rel[:strings.LastIndexByte(rel, '.')]
		default:
			rel = ""
		}
	}
}

func asValidation(err error) (*lb.ValidationError, bool) {
	var ve *lb.ValidationError
	ok := errors.As(err, &ve)
	return ve, ok
}
