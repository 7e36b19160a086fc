package localstack

import (
	"errors"
	"os"
)

// statOwner is not available on Windows, where servers never run as another user.
func statOwner(string) (uid, gid uint32, perm os.FileMode, err error) {
	return 0, 0, 0, errors.New("file owners are not supported on Windows")
}
