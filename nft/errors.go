package nft

import (
	"errors"
	"fmt"
)

// Errors a caller can test with errors.Is.
var (
	// ErrNotNetNS reports a descriptor or path that is not a network namespace.
	ErrNotNetNS = errors.New("not a network namespace")
	// ErrClosed reports use of a Conn after Close.
	ErrClosed = errors.New("connection closed")
	// ErrNotExist reports a table, chain or set that the kernel does not have.
	ErrNotExist = errors.New("does not exist")
)

// OpError is the error every Conn method returns: what was being done, to
// which object, and why it failed.
type OpError struct {
	// Op is the operation, such as "commit" or "list elements".
	Op string
	// Object names the table, chain or set involved.
	Object string
	// Err is the underlying error.
	Err error
}

func (e *OpError) Error() string {
	if e.Object == "" {
		return fmt.Sprintf("nft: %s: %v", e.Op, e.Err)
	}
	return fmt.Sprintf("nft: %s %s: %v", e.Op, e.Object, e.Err)
}

// Unwrap returns the underlying error.
func (e *OpError) Unwrap() error { return e.Err }
