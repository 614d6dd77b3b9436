package socktable

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -cflags "-O2 -g -Wall -Werror" -type sock_rec -type sock_header -go-package socktable socktable ../../bpf/socktable.bpf.c -- -I../../bpf/headers
