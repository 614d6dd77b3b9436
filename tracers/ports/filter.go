package ports

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Filter selects destinations by address or prefix, port and IP version.
// The zero Filter matches everything.
type Filter struct {
	Prefix netip.Prefix // invalid: any address
	Port   uint16       // 0: any port
	Family int          // 4 or 6; 0: both
}

// ParseDst parses --dst: an address ("10.0.0.1", "::1"), a prefix
// ("10.0.0.0/8"), a port (":443"), or an address with a port
// ("10.0.0.1:443", "[::1]:443").
func ParseDst(s string) (Filter, error) {
	var f Filter
	switch {
	case s == "":
		return f, nil
	case strings.HasPrefix(s, ":"):
		p, err := strconv.ParseUint(s[1:], 10, 16)
		if err != nil || p == 0 {
			return f, fmt.Errorf("parse destination %q: bad port", s)
		}
		f.Port = uint16(p)
		return f, nil
	case strings.Contains(s, "/"):
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return f, fmt.Errorf("parse destination %q: %w", s, err)
		}
		f.Prefix = p.Masked()
		return f, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		f.Prefix = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		return f, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return f, fmt.Errorf("parse destination %q: want an address, a prefix, :port or address:port", s)
	}
	a := ap.Addr().Unmap()
	f.Prefix = netip.PrefixFrom(a, a.BitLen())
	f.Port = ap.Port()
	return f, nil
}

// Match reports whether the destination passes the filter.
func (f Filter) Match(ap netip.AddrPort) bool {
	a := ap.Addr().Unmap()
	if f.Family == 4 && !a.Is4() || f.Family == 6 && a.Is4() {
		return false
	}
	if f.Port != 0 && ap.Port() != f.Port {
		return false
	}
	return !f.Prefix.IsValid() || f.Prefix.Contains(a)
}
