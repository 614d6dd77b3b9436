package listen

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -cflags "-O2 -g -Wall -Werror" -type counters -type peak_key -type peak -go-package listen listen ../../bpf/listen.bpf.c -- -I../../bpf/headers
