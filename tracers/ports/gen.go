package ports

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -cflags "-O2 -g -Wall -Werror -mcpu=v3" -type dest_stats -type proc_key -type conn -type event -go-package ports ports ../../bpf/ports.bpf.c -- -I../../bpf/headers
