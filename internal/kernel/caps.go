package kernel

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Cap is a Linux capability number.
type Cap int

// The capabilities nettrace's tracers need.
const (
	CapNetAdmin Cap = unix.CAP_NET_ADMIN
	CapSysAdmin Cap = unix.CAP_SYS_ADMIN
	CapPerfmon  Cap = unix.CAP_PERFMON
	CapBPF      Cap = unix.CAP_BPF
)

func (c Cap) String() string {
	switch c {
	case CapNetAdmin:
		return "CAP_NET_ADMIN"
	case CapSysAdmin:
		return "CAP_SYS_ADMIN"
	case CapPerfmon:
		return "CAP_PERFMON"
	case CapBPF:
		return "CAP_BPF"
	}
	return fmt.Sprintf("CAP_%d", int(c))
}

// EffectiveCaps returns the calling thread's effective capability set.
func EffectiveCaps() (map[Cap]bool, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("read capabilities: %w", err)
	}
	has := func(c Cap) bool { return data[c/32].Effective&(1<<(uint(c)%32)) != 0 }
	out := map[Cap]bool{}
	for _, c := range []Cap{CapNetAdmin, CapSysAdmin, CapPerfmon, CapBPF} {
		out[c] = has(c)
	}
	return out, nil
}

// RequireCaps checks the effective capabilities for the ones named, in one
// line: "missing capabilities CAP_BPF, CAP_PERFMON: run as root or grant them".
// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as it does in the kernel.
func RequireCaps(need ...Cap) error {
	have, err := EffectiveCaps()
	if err != nil {
		return err
	}
	var missing []string
	for _, c := range need {
		if have[c] || (have[CapSysAdmin] && (c == CapBPF || c == CapPerfmon)) {
			continue
		}
		missing = append(missing, c.String())
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("missing capabilities %s: run as root (sudo) or grant them with setcap %s+ep",
		strings.Join(missing, ", "), strings.ToLower(strings.Join(missing, ",")))
}
