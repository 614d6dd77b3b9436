package bundle

import (
	"fmt"
	"io"

	"github.com/nettrace/nettrace/flamegraph"
)

// WriteDiffFlameGraph draws b's profile coloured by its change from a's (a
// scaled to b's total first: red grew, blue shrank) when both records have
// profile.folded, and reports whether it drew one. compare writes it to a
// file, report embeds it.
func WriteDiffFlameGraph(w io.Writer, a, b *Bundle) (bool, error) {
	if !a.HasFile(ProfileFoldedFile) || !b.HasFile(ProfileFoldedFile) {
		return false, nil
	}
	tree := flamegraph.NewTree()
	for _, x := range []struct {
		b   *Bundle
		add flamegraph.AddFunc
	}{{a, tree.AddBefore}, {b, tree.Add}} {
		f, err := x.b.Open(ProfileFoldedFile)
		if err != nil {
			return false, err
		}
		err = flamegraph.ReadFolded(f, x.add)
		f.Close()
		if err != nil {
			return false, fmt.Errorf("read %s: %w", x.b.Path(ProfileFoldedFile), err)
		}
	}
	err := tree.WriteSVG(w, flamegraph.Options{
		Title:    "Differential flame graph: " + b.Name() + " vs " + a.Name(),
		Subtitle: fmt.Sprintf("%s's stacks coloured by their change from %s (%s scaled to %s's total): red grew, blue shrank", b.Name(), a.Name(), a.Name(), b.Name()),
		Diff:     true, Normalize: true,
	})
	if err != nil {
		return false, fmt.Errorf("draw differential flame graph: %w", err)
	}
	return true, nil
}
