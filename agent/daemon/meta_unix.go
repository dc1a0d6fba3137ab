//go:build unix

package daemon

import (
	"io/fs"
	"syscall"

	"github.com/l4nft/l4nft/agent/config"
)

// fileMeta is config.Stat's meta of fi, so that a file read here compares
// equal with the same file stat'ed by config.
func fileMeta(fi fs.FileInfo) config.FileMeta {
	m := config.FileMeta{Size: fi.Size(), ModTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		m.Dev, m.Ino = uint64(st.Dev), st.Ino
		m.CTime = st.Ctim.Nano()
	}
	return m
}
