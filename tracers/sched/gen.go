package sched

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -cflags "-O2 -g -Wall -Werror" -go-package sched sched ../../bpf/sched.bpf.c -- -I../../bpf/headers
