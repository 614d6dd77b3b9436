package timewait

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -cflags "-O2 -g -Wall -Werror" -type row_val -type port_key -go-package timewait timewait ../../bpf/timewait.bpf.c -- -I../../bpf/headers
