package netns

import (
	"fmt"
	"runtime"
	"syscall"
)

func lockOSThread() { runtime.LockOSThread() }

// setns moves the calling thread into the network namespace open as fd
// (setns(2); the syscall package has no wrapper, and this avoids a
// dependency on golang.org/x/sys for one call).
func setns(fd int) error {
	if sysSetns == 0 {
		return fmt.Errorf("setns: not supported on %s", runtime.GOARCH)
	}
	if _, _, errno := syscall.RawSyscall(sysSetns, uintptr(fd), uintptr(syscall.CLONE_NEWNET), 0); errno != 0 {
		return errno
	}
	return nil
}
