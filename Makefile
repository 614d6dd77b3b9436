# nettrace: see README.md.
GO       ?= go
CLANG    ?= clang
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
PKGS     := ./...

.PHONY: all build generate generate-check vmlinux test vmtest vmtest-arm64 lint clean

all: build

## build: one static binary with the BPF objects embedded
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o nettrace ./cmd/nettrace

## generate: rebuild the BPF objects and their Go bindings with Debian's clang
generate:
	BPF2GO_CC=$(CLANG) $(GO) generate ./tracers/... ./internal/...

## generate-check: fail when regenerating changes the committed files
generate-check: generate
	@git diff --exit-code --stat -- tracers/ internal/ || { echo "generated BPF files are out of date: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- tracers/ internal/ | grep '^??')" || { echo "generate produced files that are not committed:"; git status --porcelain -- tracers/ internal/; exit 1; }

## vmlinux: regenerate bpf/headers/vmlinux_x86.h from this machine's BTF and
## vmlinux_arm64.h from Debian's arm64 kernel package
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/headers/vmlinux_x86.h
	scripts/vmlinux-arm64.sh

## test: unit and privileged tests on this kernel (as root; CI=true turns skips into failures)
test:
	$(GO) test -count=1 $(PKGS)

## vmtest: the same tests inside Debian's cloud kernels under qemu (VMTEST_KERNELS: 5.10 6.1 6.12; fentry and kprobe tiers)
vmtest:
	scripts/vmtest.sh

## vmtest-arm64: the same tests in Debian's arm64 cloud kernel under qemu-system-aarch64 (GOARCH=arm64)
vmtest-arm64:
	VMTEST_ARCH=arm64 scripts/vmtest.sh

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfe[lb]\.go$$')); test -z "$$out" || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	$(GO) vet $(PKGS)

clean:
	rm -f nettrace
