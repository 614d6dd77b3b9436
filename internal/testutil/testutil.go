// Package testutil holds helpers for nettrace's tests: privilege checks,
// throw-away network namespaces and loopback traffic with known outcomes.
package testutil

import (
	"os"
	"testing"
)

const rootReason = "needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN): run as root"

// RequireRoot skips the test when not running as root, or fails it when
// CI=true, where every privileged test must run.
func RequireRoot(t testing.TB) {
	t.Helper()
	requireRoot(t, os.Geteuid())
}

func requireRoot(t testing.TB, euid int) {
	t.Helper()
	if euid == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(rootReason)
		return // for fakes whose Fatal returns
	}
	t.Skip(rootReason)
}

// RequireBPF is RequireRoot for tests that load BPF programs.
func RequireBPF(t testing.TB) {
	t.Helper()
	RequireRoot(t)
}
