package demo

import (
	"errors"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/testutil"
)

// connects makes ok connects to a live listener and refused connects to a
// closed port, as the client sees them, and returns both counts.
func connects(t *testing.T, ok, refused int) (int, int) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	closed, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	var gotOK, gotRefused int
	for i := 0; i < ok; i++ {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatalf("connect %d: %v", i, err)
		}
		gotOK++
		c.Close()
	}
	for i := 0; i < refused; i++ {
		c, err := net.Dial("tcp4", closedAddr)
		if err == nil {
			c.Close()
			t.Fatalf("connect to closed port %s succeeded", closedAddr)
		}
		gotRefused++
	}
	return gotOK, gotRefused
}

// bestTier is what the kernel probes (independent tiny programs) say auto
// should pick.
func bestTier(t *testing.T) attach.Tier {
	if err := kernel.ProbeFentry(kernel.ProbeFunc); err == nil {
		return attach.Fentry
	}
	if err := kernel.ProbeKprobe(kernel.ProbeFunc); err == nil {
		return attach.Kprobe
	}
	return attach.Tracepoint
}

func TestAutoPicksBestTier(t *testing.T) {
	testutil.RequireBPF(t)
	want := bestTier(t)
	if env := os.Getenv("NETTRACE_EXPECT_TIER"); env != "" {
		if attach.Tier(env) != want {
			t.Fatalf("kernel probes say the best tier is %s, the test environment expects %s", want, env)
		}
	}
	tr, err := New(Options{PID: os.Getpid()})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer tr.Close()
	c := tr.Choice()
	t.Logf("chose %s; refused: %+v", c, c.Refused)
	if c.Tier != want {
		t.Fatalf("auto chose tier %s, want %s", c.Tier, want)
	}
	// Every better tier must carry its reason.
	for _, r := range c.Refused {
		if r.Reason == "" {
			t.Errorf("refusal of %s has no reason", r.Method)
		}
	}
}

func TestEveryTierCountsExactly(t *testing.T) {
	testutil.RequireBPF(t)
	avail := map[attach.Tier]bool{
		attach.Fentry:     kernel.ProbeFentry(kernel.ProbeFunc) == nil,
		attach.Kprobe:     kernel.ProbeKprobe(kernel.ProbeFunc) == nil,
		attach.Tracepoint: true,
	}
	for _, tier := range attach.Tiers {
		t.Run(string(tier), func(t *testing.T) {
			tr, err := New(Options{PID: os.Getpid(), Tier: tier})
			if !avail[tier] {
				if err == nil {
					tr.Close()
					t.Fatalf("forcing unavailable tier %s succeeded", tier)
				}
				var nae *attach.NoAlternativeError
				if !errors.As(err, &nae) || !strings.Contains(err.Error(), "tier "+string(tier)+" is not available") {
					t.Fatalf("forcing %s: unclear error: %v", tier, err)
				}
				t.Logf("forcing %s fails as it should: %v", tier, err)
				return
			}
			if err != nil {
				t.Fatalf("force %s: %+v", tier, err)
			}
			defer tr.Close()
			if got := tr.Choice().Tier; got != tier {
				t.Fatalf("forced %s, got %s", tier, got)
			}
			ok, refused := connects(t, 40, 10)
			n, err := tr.Connects()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("tier %s (%s): client made %d+%d connects, BPF counted %d", tier, tr.Choice().Method, ok, refused, n)
			if n != uint64(ok+refused) {
				t.Fatalf("tier %s counted %d connects, client made %d", tier, n, ok+refused)
			}
		})
	}
}

// TestRawTPAlternative proves the last fallback inside the tracepoint tier,
// which auto never reaches on a kernel with tp_btf.
func TestRawTPAlternative(t *testing.T) {
	testutil.RequireBPF(t)
	spec, err := loadDemo()
	if err != nil {
		t.Fatal(err)
	}
	for name := range spec.Programs {
		if name != "connect_raw_tp" {
			delete(spec.Programs, name)
		}
	}
	hooks := []attach.Hook{{Name: "connect", Alternatives: Hooks[0].Alternatives[3:]}}
	objs, err := attach.Load(spec, hooks, attach.Options{Constants: map[string]any{"targ_tgid": uint32(os.Getpid())}})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer objs.Close()
	tr := &Tracer{objs: objs}
	if m := tr.Choice().Method; m != "raw_tp" {
		t.Fatalf("method %s, want raw_tp", m)
	}
	ok, refused := connects(t, 20, 5)
	n, err := tr.Connects()
	if err != nil {
		t.Fatal(err)
	}
	if n != uint64(ok+refused) {
		t.Fatalf("raw_tp counted %d connects, client made %d", n, ok+refused)
	}
}
