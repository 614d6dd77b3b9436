package profile

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -cflags "-O2 -g -Wall -Werror" -type sample_key -type sample_value -type image -go-package profile profile ../../bpf/profile.bpf.c -- -I../../bpf/headers
