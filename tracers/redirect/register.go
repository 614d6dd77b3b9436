package redirect

import (
	"errors"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/kernel"
)

func init() {
	attach.Register(attach.TracerInfo{
		Name:    "redirect",
		Summary: "sockmap/sk_msg short-cut for loopback TCP",
		Caps:    Caps,
		Method:  "sockops+sk_msg",
		Check: func() error {
			return errors.Join(kernel.ProbeSockops(), kernel.ProbeSkMsg(), Supported())
		},
	})
}
