package redirect

import "syscall"

var (
	errEPIPE      = syscall.EPIPE
	errECONNRESET = syscall.ECONNRESET
)
