//go:build unix

package localstack

import (
	"fmt"
	"os"
	"syscall"
)

// statOwner returns the owner, group and permission bits of path.
func statOwner(path string) (uid, gid uint32, perm os.FileMode, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, 0, fmt.Errorf("%s: no owner information", path)
	}
	return st.Uid, st.Gid, fi.Mode().Perm(), nil
}
