//go:build !unix

package daemon

import (
	"io/fs"

	"github.com/l4nft/l4nft/agent/config"
)

func fileMeta(fi fs.FileInfo) config.FileMeta {
	return config.FileMeta{Size: fi.Size(), ModTime: fi.ModTime().UnixNano()}
}
