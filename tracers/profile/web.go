package profile

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/google/pprof/driver"
	pprofile "github.com/google/pprof/profile"
)

// LoopbackAddr completes an --http address: a bare port or ":port" binds to
// 127.0.0.1; a named host is kept.
func LoopbackAddr(addr string) (string, error) {
	if !strings.Contains(addr, ":") {
		addr = ":" + addr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("parse HTTP address %q: %w", addr, err)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// Serve runs pprof's web UI (github.com/google/pprof/driver) for p on addr
// until ctx ends. ready gets the UI's URL once it listens.
func Serve(ctx context.Context, addr string, p *pprofile.Profile, ready func(url string)) error {
	addr, err := LoopbackAddr(addr)
	if err != nil {
		return err
	}
	fs := &flagSet{FlagSet: flag.NewFlagSet("pprof", flag.ContinueOnError),
		args: []string{"-http=" + addr, "-no_browser", "-symbolize=none", "nettrace"}}
	fs.SetOutput(io.Discard)
	err = driver.PProf(&driver.Options{
		Flagset: fs,
		Fetch:   fetcher{p},
		UI:      quietUI{},
		HTTPServer: func(args *driver.HTTPServerArgs) error {
			ln, err := net.Listen("tcp", args.Hostport)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", args.Hostport, err)
			}
			mux := http.NewServeMux()
			for pattern, h := range args.Handlers {
				mux.Handle(pattern, h)
			}
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				srv.Shutdown(sctx)
			}()
			if ready != nil {
				ready("http://" + ln.Addr().String() + "/")
			}
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve pprof web UI: %w", err)
			}
			return nil
		},
	})
	if err != nil {
		return fmt.Errorf("run pprof web UI: %w", err)
	}
	return nil
}

type fetcher struct{ p *pprofile.Profile }

func (f fetcher) Fetch(string, time.Duration, time.Duration) (*pprofile.Profile, string, error) {
	return f.p.Copy(), "", nil
}

// flagSet feeds pprof's driver a fixed command line.
type flagSet struct {
	*flag.FlagSet
	args  []string
	extra string
}

type stringList []*string

func (s *stringList) String() string { return "" }
func (s *stringList) Set(v string) error {
	*s = append(*s, &v)
	return nil
}

func (f *flagSet) StringList(name, def, usage string) *[]*string {
	l := &stringList{}
	if def != "" {
		l.Set(def)
	}
	f.Var(l, name, usage)
	return (*[]*string)(l)
}

func (f *flagSet) ExtraUsage() string      { return f.extra }
func (f *flagSet) AddExtraUsage(eu string) { f.extra += eu }

func (f *flagSet) Parse(usage func()) []string {
	if err := f.FlagSet.Parse(f.args); err != nil {
		usage()
		return nil
	}
	return f.Args()
}

// quietUI keeps pprof's messages off the terminal; Serve reports the URL.
type quietUI struct{}

func (quietUI) ReadLine(string) (string, error)     { return "", io.EOF }
func (quietUI) Print(...any)                        {}
func (quietUI) PrintErr(...any)                     {}
func (quietUI) IsTerminal() bool                    { return false }
func (quietUI) WantBrowser() bool                   { return false }
func (quietUI) SetAutoComplete(func(string) string) {}
