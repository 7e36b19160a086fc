package localstack

import "syscall"

// sysProcAttr makes the child get deathSig when its parent dies, and run as the user as.
func sysProcAttr(deathSig syscall.Signal, as *runAs) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Pdeathsig: deathSig}
	if as != nil {
		a.Credential = &syscall.Credential{Uid: as.uid, Gid: as.gid, Groups: []uint32{}}
	}
	return a
}
