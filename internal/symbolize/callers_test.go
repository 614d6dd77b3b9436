package symbolize

import "runtime"

func runtimeCallers(pcs *[1]uintptr) { runtime.Callers(1, pcs[:]) }
