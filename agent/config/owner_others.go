//go:build !unix

package config

import (
	"io/fs"
	"os"
)

type fileOwner struct{}

func ownerOf(fs.FileInfo) *fileOwner { return nil }

func (o *fileOwner) apply(*os.File) error { return nil }

func fileMeta(fi fs.FileInfo) FileMeta {
	return FileMeta{Size: fi.Size(), ModTime: fi.ModTime().UnixNano()}
}
