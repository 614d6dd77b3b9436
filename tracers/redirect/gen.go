package redirect

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -cflags "-O2 -g -Wall -Werror" -type sk_key -type pending_rec -type redir_config -type redir_stat -go-package redirect redirect ../../bpf/redirect.bpf.c -- -I../../bpf/headers
