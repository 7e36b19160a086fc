//go:build linux

package main

import "syscall"

// raiseOpenFiles lifts the open-file limit to n when it is lower (root may raise the hard
// limit too): a simulated fleet and the broker in one process hold two sockets per device.
func raiseOpenFiles(n uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= n {
		return nil
	}
	want := syscall.Rlimit{Cur: n, Max: max(lim.Max, n)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		// Not allowed to raise the hard limit: take what it allows.
		want = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
		return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
	}
	return nil
}
