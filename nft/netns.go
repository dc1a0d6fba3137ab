package nft

import "path/filepath"

// NetNS names the network namespace a Conn acts in. The zero value is the
// namespace of the calling thread at the time Open is called.
type NetNS struct {
	path string
	fd   int
	set  bool
}

// NetNSPath is the namespace bound at path, such as /proc/1234/ns/net or
// /run/netns/NAME.
func NetNSPath(path string) NetNS { return NetNS{path: path, set: true} }

// NetNSName is a namespace created by `ip netns add NAME`.
func NetNSName(name string) NetNS {
	return NetNSPath(filepath.Join("/run/netns", name))
}

// NetNSFd is the namespace behind an open descriptor. Open duplicates it, so
// the caller may close its own copy at any time.
func NetNSFd(fd int) NetNS { return NetNS{fd: fd, set: true} }

// String describes the namespace for error messages.
func (n NetNS) String() string {
	switch {
	case !n.set:
		return "current network namespace"
	case n.path != "":
		return n.path
	default:
		return "network namespace fd"
	}
}
