//go:build unix

package config

import (
	"io/fs"
	"os"
	"syscall"
)

// fileOwner is a file's user and group.
type fileOwner struct{ uid, gid int }

func ownerOf(fi fs.FileInfo) *fileOwner {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	return &fileOwner{uid: int(st.Uid), gid: int(st.Gid)}
}

// apply gives f the owner o, if o is not nil and f does not have it yet.
func (o *fileOwner) apply(f *os.File) error {
	if o == nil {
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if cur := ownerOf(fi); cur != nil && *cur == *o {
		return nil
	}
	return f.Chown(o.uid, o.gid)
}

// fileMeta returns what tells a changed file from an unchanged one
// without reading it.
func fileMeta(fi fs.FileInfo) FileMeta {
	m := FileMeta{Size: fi.Size(), ModTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		m.Dev, m.Ino = uint64(st.Dev), st.Ino
		m.CTime = st.Ctim.Nano()
	}
	return m
}
