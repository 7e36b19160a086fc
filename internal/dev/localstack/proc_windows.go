package localstack

import "syscall"

// sysProcAttr does nothing on Windows: there is no parent-death signal and servers are never
// started as another user there.
func sysProcAttr(syscall.Signal, *runAs) *syscall.SysProcAttr { return nil }
