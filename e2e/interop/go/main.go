// Interop check with go-spiffe v2: fetch the X509-SVID, bundles and a JWT-SVID through Sigil's Workload API,
// validate them with go-spiffe's own code, and (with -rotations N) wait for N rotations on the stream.
// Prints one JSON object; exits non-zero with a message on any failure.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type rotation struct {
	Serial   string  `json:"serial"`
	NotAfter float64 `json:"not_after"`
	Received float64 `json:"received"`
}

type watcher struct {
	want   int
	seen   []rotation
	done   chan struct{}
	errors []string
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	s, err := c.DefaultSVID(), error(nil)
	if s == nil {
		err = fmt.Errorf("update without SVID")
		w.OnX509ContextWatchError(err)
		return
	}
	leaf := s.Certificates[0]
	serial := leaf.SerialNumber.String()
	if len(w.seen) == 0 || w.seen[len(w.seen)-1].Serial != serial {
		w.seen = append(w.seen, rotation{serial, float64(leaf.NotAfter.Unix()), float64(time.Now().UnixNano()) / 1e9})
	}
	if len(w.seen) > w.want {
		select {
		case <-w.done:
		default:
			close(w.done)
		}
	}
}

func (w *watcher) OnX509ContextWatchError(err error) {
	if err != nil && err != context.Canceled {
		w.errors = append(w.errors, err.Error())
	}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}

func main() {
	addr := flag.String("socket", os.Getenv("SPIFFE_ENDPOINT_SOCKET"), "unix:///path/to/api.sock")
	audience := flag.String("audience", "sigil-interop", "JWT audience")
	rotations := flag.Int("rotations", 0, "wait for this many X509-SVID rotations")
	timeout := flag.Duration("timeout", 2*time.Minute, "overall timeout")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(*addr))
	if err != nil {
		fail("client: %v", err)
	}
	defer client.Close()

	x509ctx, err := client.FetchX509Context(ctx)
	if err != nil {
		fail("FetchX509Context: %v", err)
	}
	svid := x509ctx.DefaultSVID()
	if _, _, err := x509svid.Verify(svid.Certificates, x509ctx.Bundles); err != nil {
		fail("x509svid.Verify against the fetched bundles: %v", err)
	}
	bundles, err := client.FetchX509Bundles(ctx)
	if err != nil {
		fail("FetchX509Bundles: %v", err)
	}
	if _, err := bundles.GetX509BundleForTrustDomain(svid.ID.TrustDomain()); err != nil {
		fail("own trust domain missing from X.509 bundles: %v", err)
	}
	jwt, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: *audience})
	if err != nil {
		fail("FetchJWTSVID: %v", err)
	}
	jwtBundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		fail("FetchJWTBundles: %v", err)
	}
	local, err := jwtsvid.ParseAndValidate(jwt.Marshal(), jwtBundles, []string{*audience})
	if err != nil {
		fail("jwtsvid.ParseAndValidate: %v", err)
	}
	remote, err := client.ValidateJWTSVID(ctx, jwt.Marshal(), *audience)
	if err != nil {
		fail("ValidateJWTSVID: %v", err)
	}

	out := map[string]any{
		"client":                 "go-spiffe",
		"spiffe_id":              svid.ID.String(),
		"jwt_spiffe_id":          local.ID.String(),
		"jwt_validated_remotely": remote.ID.String(),
		"rotations":              []rotation{},
	}
	if *rotations > 0 {
		w := &watcher{want: *rotations, done: make(chan struct{})}
		wctx, wcancel := context.WithCancel(ctx)
		go func() { _ = client.WatchX509Context(wctx, w) }()
		select {
		case <-w.done:
		case <-ctx.Done():
		}
		wcancel()
		if len(w.seen) <= *rotations {
			fail("saw %d rotations, wanted %d (errors: %v)", len(w.seen)-1, *rotations, w.errors)
		}
		for i := 1; i < len(w.seen); i++ {
			if w.seen[i].Received >= w.seen[i-1].NotAfter {
				fail("gap: SVID %s arrived after %s expired", w.seen[i].Serial, w.seen[i-1].Serial)
			}
		}
		out["rotations"] = w.seen
	}
	enc, _ := json.Marshal(out)
	fmt.Println(string(enc))
}
