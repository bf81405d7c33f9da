// Federation commands of the workload program: JWT-SVIDs across trust domains, the bundles a workload is
// given, and go-spiffe's own bundle endpoint client (federation.FetchBundle) and server (federation.NewHandler)
// against Sigil's. Every command prints JSON and exits 1 with a message on any failure.
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type fedArgs struct {
	want                                    spiffeid.ID
	audience, token, url, bundle, cert, key string
	listen                                  string
	conns                                   int
	period, timeout                         time.Duration
}

// fingerprints: SHA-256 (hex) of each certificate's DER, sorted.
func fingerprints(certs []*x509.Certificate) []string {
	out := []string{}
	for _, c := range certs {
		sum := sha256.Sum256(c.Raw)
		out = append(out, hex.EncodeToString(sum[:]))
	}
	sort.Strings(out)
	return out
}

func kids[V any](m map[string]V) []string {
	out := []string{}
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func x509Map(set *x509bundle.Set) map[string][]string {
	out := map[string][]string{}
	for _, b := range set.Bundles() {
		out[b.TrustDomain().IDString()] = fingerprints(b.X509Authorities())
	}
	return out
}

func jwtMap(set *jwtbundle.Set) map[string][]string {
	out := map[string][]string{}
	for _, b := range set.Bundles() {
		out[b.TrustDomain().IDString()] = kids(b.JWTAuthorities())
	}
	return out
}

func describe(b *spiffebundle.Bundle) map[string]any {
	seq, _ := b.SequenceNumber()
	hint, _ := b.RefreshHint()
	return map[string]any{"trust_domain": b.TrustDomain().IDString(), "x509": fingerprints(b.X509Authorities()),
		"jwt": kids(b.JWTAuthorities()), "sequence": seq, "refresh_hint": hint.Seconds()}
}

type bundleWatcher struct{ start time.Time }

func (w bundleWatcher) OnX509BundlesUpdate(set *x509bundle.Set) {
	now := time.Now()
	skids := map[string][]string{}
	for _, b := range set.Bundles() {
		ids := []string{}
		for _, c := range b.X509Authorities() {
			ids = append(ids, hex.EncodeToString(c.SubjectKeyId))
		}
		sort.Strings(ids)
		skids[b.TrustDomain().IDString()] = ids
	}
	printJSON(map[string]any{"received": float64(now.UnixNano()) / 1e9, "bundles": x509Map(set), "skids": skids})
}

func (w bundleWatcher) OnX509BundlesWatchError(err error) {
	if err != nil && err != context.Canceled && err != context.DeadlineExceeded {
		fmt.Fprintf(os.Stderr, "watch error: %v\n", err)
	}
}

// bundleLoad: -conns keep-alive HTTPS connections GET -url as fast as they can for -for (a load generator
// for the bundle endpoint's throughput: the server certificate is not checked, the answer must be a 200 with
// a bundle document). Prints {requests, errors, seconds, per_second}.
func bundleLoad(a fedArgs) {
	var total, errs atomic.Int64
	end := time.Now().Add(a.period)
	var wg sync.WaitGroup
	for i := 0; i < a.conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1,
				TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // #nosec: load only, never trusted
			for time.Now().Before(end) {
				resp, err := client.Get(a.url)
				if err != nil {
					errs.Add(1)
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"keys"`)) {
					errs.Add(1)
					continue
				}
				total.Add(1)
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	secs := time.Since(start).Seconds()
	printJSON(map[string]any{"requests": total.Load(), "errors": errs.Load(), "seconds": secs,
		"per_second": float64(total.Load()) / secs, "connections": a.conns})
}

func federationCommand(cmd string, a fedArgs) {
	if cmd == "bundleload" {
		bundleLoad(a)
		return
	}
	if cmd == "bundleserve" {
		bundleServe(a)
		return
	}
	if cmd == "fetchbundle" {
		ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
		defer cancel()
		local, err := spiffebundle.Load(a.want.TrustDomain(), a.bundle)
		if err != nil {
			fail("bundle %s: %v", a.bundle, err)
		}
		b, err := federation.FetchBundle(ctx, a.want.TrustDomain(), a.url, federation.WithSPIFFEAuth(local, a.want))
		if err != nil {
			fail("federation.FetchBundle %s: %v", a.url, err)
		}
		printJSON(describe(b))
		return
	}
	period := time.Duration(0)
	if cmd == "watchbundles" {
		period = a.period
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout+period)
	defer cancel()
	client, err := workloadapi.New(ctx)
	if err != nil {
		fail("client: %v", err)
	}
	defer client.Close()
	switch cmd {
	case "mint":
		jwt, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: a.audience})
		if err != nil {
			fail("FetchJWTSVID: %v", err)
		}
		if jwt.ID != a.want {
			fail("JWT-SVID is %s, want %s", jwt.ID, a.want)
		}
		printJSON(map[string]any{"token": jwt.Marshal(), "spiffe_id": jwt.ID.String()})
	case "validate":
		remote, err := client.ValidateJWTSVID(ctx, a.token, a.audience)
		if err != nil {
			fail("ValidateJWTSVID: %v", err)
		}
		jb, err := client.FetchJWTBundles(ctx)
		if err != nil {
			fail("FetchJWTBundles: %v", err)
		}
		local, err := jwtsvid.ParseAndValidate(a.token, jb, []string{a.audience})
		if err != nil {
			fail("jwtsvid.ParseAndValidate with FetchJWTBundles: %v", err)
		}
		if remote.ID != a.want || local.ID != a.want {
			fail("validated as %s (agent) and %s (go-spiffe), want %s", remote.ID, local.ID, a.want)
		}
		printJSON(map[string]any{"remote_id": remote.ID.String(), "local_id": local.ID.String(),
			"remote_audience": remote.Audience, "jwt_bundles": jwtMap(jb)})
	case "bundles":
		xb, err := client.FetchX509Bundles(ctx)
		if err != nil {
			fail("FetchX509Bundles: %v", err)
		}
		jb, err := client.FetchJWTBundles(ctx)
		if err != nil {
			fail("FetchJWTBundles: %v", err)
		}
		printJSON(map[string]any{"x509": x509Map(xb), "jwt": jwtMap(jb)})
	case "watchbundles":
		wctx, wcancel := context.WithTimeout(ctx, period)
		defer wcancel()
		err := client.WatchX509Bundles(wctx, bundleWatcher{time.Now()})
		if err != nil && wctx.Err() == nil {
			fail("WatchX509Bundles: %v", err)
		}
	}
}

// bundleServe: a bundle endpoint written with go-spiffe: a CA and a JWT key made here, served by
// federation.NewHandler at / over HTTPS with -cert/-key (https_web). Prints the served document first.
func bundleServe(a fedArgs) {
	td := a.want.TrustDomain()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fail("key: %v", err)
	}
	uri, _ := url.Parse(td.IDString())
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{Organization: []string{"go-spiffe peer"}},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, URIs: []*url.URL{uri}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		fail("CA: %v", err)
	}
	ca, _ := x509.ParseCertificate(der)
	jwtKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b := spiffebundle.New(td)
	b.AddX509Authority(ca)
	if err := b.AddJWTAuthority("go-peer-key-1", jwtKey.Public()); err != nil {
		fail("jwt authority: %v", err)
	}
	b.SetRefreshHint(time.Second)
	b.SetSequenceNumber(7)
	handler, err := federation.NewHandler(td, b)
	if err != nil {
		fail("federation.NewHandler: %v", err)
	}
	printJSON(describe(b))
	srv := &http.Server{Addr: a.listen, Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	fail("serve: %v", srv.ListenAndServeTLS(a.cert, a.key))
}
