//go:build unix && !linux

package localstack

import "syscall"

// sysProcAttr runs the child as the user as. Outside Linux there is no parent-death signal:
// a server outlives a parent that dies without stopping it.
func sysProcAttr(_ syscall.Signal, as *runAs) *syscall.SysProcAttr {
	if as == nil {
		return nil
	}
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: as.uid, Gid: as.gid, Groups: []uint32{}}}
}
