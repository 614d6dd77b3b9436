package sched

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -cflags "-O2 -g -Wall -Werror" -type offcpu_key -type offcpu_val -type cpu_run -go-package sched sched ../../bpf/sched.bpf.c -- -I../../bpf/headers
