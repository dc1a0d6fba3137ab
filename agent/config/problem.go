package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/l4nft/l4nft/lb"
)

// Problem is one thing wrong with a configuration, located in its source.
type Problem struct {
	// File is the file name, or "request body" for an API request.
	File string `json:"file,omitempty"`
	// Line is 1-based; 0 when unknown.
	Line int `json:"line,omitempty"`
	// Path names the field, such as farms[web].backends[app0].weight.
	Path string `json:"path,omitempty"`
	// Message says what is wrong.
	Message string `json:"message"`
}

// String formats the problem as "file:line: path: message".
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Error lists every problem found in a configuration. It matches
// lb.ErrInvalid (errors.Is).
type Error struct {
	Problems []Problem
}

// Error returns the problems on one line, separated by "; ".
func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	noun := "problems"
	if len(lines) == 1 {
		noun = "problem"
	}
	return fmt.Sprintf("invalid configuration (%d %s): %s", len(lines), noun, strings.Join(lines, "; "))
}

// Is makes errors.Is(err, lb.ErrInvalid) true.
func (e *Error) Is(target error) bool { return target == lb.ErrInvalid }

// newError sorts problems by file and line and returns them as an *Error,
// or nil when there are none.
func newError(problems []Problem) error {
	if len(problems) == 0 {
		return nil
	}
	slices.SortStableFunc(problems, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line))
	})
	return &Error{Problems: problems}
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
