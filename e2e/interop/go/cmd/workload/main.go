// workload: the application side of the chart tier (e2e/helm/run.sh), written as an application
// developer would with go-spiffe v2 against SPIFFE_ENDPOINT_SOCKET:
//
//	workload serve -id ID [-listen :8443]   fetch the X509-SVID (retrying), then serve mTLS: a client must
//	                                        present exactly ID; answers "<own ID> <hostname>"
//	workload dial -id ID -addr HOST:PORT    mTLS to a peer that must present exactly ID; prints JSON (with
//	                                        my_authority_key_id: the CA that signed the SVID used)
//	workload check -id ID [-audience A]     X509-SVID and a JWT-SVID for exactly ID, both validated; JSON
//	                                        (-jwt=false: the X509-SVID only, which the agent serves from its cache)
//	workload watch -id ID -for D            keep an X509Source for D; every 100 ms the SVID must be ID and
//	                                        unexpired; prints the distinct serials seen; exit 1 on a gap
//	workload race -id ID                    ONE FetchX509SVID at process start, no retry; prints
//	                                        RESULT ok|fail <ms since start> <start unix ns> <done unix ns>, then sleeps
//	workload first -id ID                   like race, but retries every 20 ms until it succeeds
//	workload x509stream -id ID              the raw FetchX509SVID stream, one line per message (stream.go)
//	workload start -id ID                   no Workload API at all: RESULT ok 0 <start> <start>, then sleeps
//	                                        (the pod start-up floor of the node, without Sigil)
//
// Federation (e2e/interop/tests/federation.rs; see federation.go):
//
//	workload mint -id ID -audience A        a JWT-SVID for exactly ID; JSON {token, spiffe_id}
//	workload validate -id ID -audience A -token T   the token (of ID, any trust domain) through
//	                                        ValidateJWTSVID and jwtsvid.ParseAndValidate with FetchJWTBundles;
//	                                        JSON with both results and every bundle's authorities
//	workload bundles -id ID                 the caller's X.509 and JWT bundles (trust domain -> authorities)
//	workload watchbundles -id ID -for D     FetchX509Bundles stream: one JSON line per update
//	workload fetchbundle -id ENDPOINT_ID -url U -bundle FILE   federation.FetchBundle with https_spiffe
//	                                        (bundle FILE of ENDPOINT_ID's trust domain); JSON of the bundle
//	workload bundleserve -id spiffe://TD -listen A -cert C -key K   federation.NewHandler serving a bundle
//	                                        of TD (a CA made here) over HTTPS (https_web); prints its JSON
//	workload bundleload -id ID -url U -conns N -for D   load generator for a bundle endpoint (benches)
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}

func printJSON(v any) {
	enc, _ := json.Marshal(v)
	fmt.Println(string(enc))
}

func main() {
	start := time.Now()
	if len(os.Args) < 2 {
		fail("usage: workload serve|dial|check|watch|race|first|start -id SPIFFE_ID [flags]")
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	idFlag := fs.String("id", "", "the SPIFFE ID this workload and its peers must have")
	listen := fs.String("listen", ":8443", "serve: listen address")
	addr := fs.String("addr", "", "dial: peer address")
	audience := fs.String("audience", "sigil-helm-e2e", "check: JWT audience")
	period := fs.Duration("for", time.Minute, "watch: how long")
	timeout := fs.Duration("timeout", 30*time.Second, "overall bound of one fetch or exchange")
	withJWT := fs.Bool("jwt", true, "check: also fetch and validate a JWT-SVID (needs the server)")
	token := fs.String("token", "", "validate: the JWT-SVID")
	url := fs.String("url", "", "fetchbundle: bundle endpoint URL")
	bundlePath := fs.String("bundle", "", "fetchbundle: SPIFFE bundle of the endpoint ID's trust domain")
	certPath := fs.String("cert", "", "bundleserve: PEM certificate chain")
	keyPath := fs.String("key", "", "bundleserve: PEM key")
	conns := fs.Int("conns", 8, "bundleload: connections")
	_ = fs.Parse(os.Args[2:])
	want, err := spiffeid.FromString(*idFlag)
	if err != nil {
		fail("-id: %v", err)
	}

	switch cmd {
	case "start":
		fmt.Printf("RESULT ok 0 %d %d\n", start.UnixNano(), start.UnixNano())
		for {
			time.Sleep(time.Hour)
		}

	case "race", "first":
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			svid, err := workloadapi.FetchX509SVID(ctx)
			cancel()
			done := time.Now()
			if err == nil && svid.ID != want {
				err = fmt.Errorf("got %s, want %s", svid.ID, want)
			}
			if err == nil || cmd == "race" {
				result := "ok"
				if err != nil {
					result = "fail " + strings.ReplaceAll(err.Error(), "\n", " ")
				}
				fmt.Printf("RESULT %s %d %d %d\n", strings.SplitN(result, " ", 2)[0], done.Sub(start).Milliseconds(), start.UnixNano(), done.UnixNano())
				if err != nil {
					fmt.Println(result)
				}
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		for { // stay up: the test reads the log, the pod never restarts (a bare select{} is a deadlock to Go)
			time.Sleep(time.Hour)
		}

	case "check":
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		client, err := workloadapi.New(ctx)
		if err != nil {
			fail("client: %v", err)
		}
		defer client.Close()
		x, err := client.FetchX509Context(ctx)
		if err != nil {
			fail("FetchX509Context: %v", err)
		}
		svid := x.DefaultSVID()
		if svid.ID != want {
			fail("X509-SVID is %s, want %s", svid.ID, want)
		}
		if _, _, err := x509svid.Verify(svid.Certificates, x.Bundles); err != nil {
			fail("x509svid.Verify: %v", err)
		}
		if !*withJWT {
			printJSON(map[string]any{"spiffe_id": svid.ID.String(), "x509_not_after": svid.Certificates[0].NotAfter.Unix(),
				"serial": svid.Certificates[0].SerialNumber.String()})
			return
		}
		jwt, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: *audience})
		if err != nil {
			fail("FetchJWTSVID: %v", err)
		}
		bundles, err := client.FetchJWTBundles(ctx)
		if err != nil {
			fail("FetchJWTBundles: %v", err)
		}
		parsed, err := jwtsvid.ParseAndValidate(jwt.Marshal(), bundles, []string{*audience})
		if err != nil {
			fail("jwtsvid.ParseAndValidate: %v", err)
		}
		if parsed.ID != want {
			fail("JWT-SVID is %s, want %s", parsed.ID, want)
		}
		printJSON(map[string]any{"spiffe_id": svid.ID.String(), "jwt_spiffe_id": parsed.ID.String(),
			"x509_not_after": svid.Certificates[0].NotAfter.Unix(), "serial": svid.Certificates[0].SerialNumber.String()})

	case "serve":
		ctx := context.Background()
		source, err := workloadapi.NewX509Source(ctx)
		for err != nil {
			fmt.Fprintf(os.Stderr, "X509Source: %v (retrying)\n", err)
			time.Sleep(time.Second)
			source, err = workloadapi.NewX509Source(ctx)
		}
		ln, err := spiffetls.ListenWithMode(ctx, "tcp", *listen, spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(want), source))
		if err != nil {
			fail("listen: %v", err)
		}
		host, _ := os.Hostname()
		fmt.Printf("serving mTLS on %s as %s\n", *listen, want)
		for {
			conn, err := ln.Accept()
			if err != nil {
				fmt.Fprintf(os.Stderr, "accept: %v\n", err)
				continue
			}
			go func(c net.Conn) {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					fmt.Fprintf(os.Stderr, "read: %v\n", err)
					return
				}
				peer, _ := spiffetls.PeerIDFromConn(c)
				fmt.Printf("peer %s (%s) said %q\n", peer, c.RemoteAddr(), strings.TrimSpace(line))
				fmt.Fprintf(c, "%s %s %s\n", want, host, peer)
			}(conn)
		}

	case "dial":
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		source, err := workloadapi.NewX509Source(ctx)
		if err != nil {
			fail("X509Source: %v", err)
		}
		defer source.Close()
		conn, err := spiffetls.DialWithMode(ctx, "tcp", *addr, spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(want), source))
		if err != nil {
			fail("mTLS dial %s: %v", *addr, err)
		}
		defer conn.Close()
		host, _ := os.Hostname()
		fmt.Fprintf(conn, "hello from %s\n", host)
		reply, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			fail("read: %v", err)
		}
		peer, err := spiffetls.PeerIDFromConn(conn)
		if err != nil {
			fail("peer ID: %v", err)
		}
		f := strings.Fields(reply)
		if len(f) != 3 {
			fail("reply %q", reply)
		}
		mine, err := source.GetX509SVID()
		if err != nil {
			fail("own SVID: %v", err)
		}
		printJSON(map[string]any{"peer_id": peer.String(), "peer_host": f[1], "peer_saw_me_as": f[2], "me": host,
			"my_authority_key_id": hex.EncodeToString(mine.Certificates[0].AuthorityKeyId)})

	case "watch":
		ctx, cancel := context.WithTimeout(context.Background(), *period+*timeout)
		defer cancel()
		source, err := workloadapi.NewX509Source(ctx)
		if err != nil {
			fail("X509Source: %v", err)
		}
		defer source.Close()
		serials := []string{}
		checks := 0
		end := time.Now().Add(*period)
		for time.Now().Before(end) {
			svid, err := source.GetX509SVID()
			if err != nil {
				fail("after %d checks: no SVID: %v", checks, err)
			}
			now := time.Now()
			leaf := svid.Certificates[0]
			if svid.ID != want || now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
				fail("after %d checks: SVID %s valid %s..%s at %s", checks, svid.ID, leaf.NotBefore, leaf.NotAfter, now)
			}
			s := leaf.SerialNumber.String()
			if len(serials) == 0 || serials[len(serials)-1] != s {
				serials = append(serials, s)
				fmt.Fprintf(os.Stderr, "%s serial %s\n", now.Format(time.RFC3339Nano), s)
			}
			checks++
			time.Sleep(100 * time.Millisecond)
		}
		printJSON(map[string]any{"checks": checks, "serials": serials})

	case "x509stream":
		x509Stream()

	case "mint", "validate", "bundles", "watchbundles", "fetchbundle", "bundleserve", "bundleload":
		federationCommand(cmd, fedArgs{want: want, audience: *audience, token: *token, url: *url, bundle: *bundlePath,
			cert: *certPath, key: *keyPath, listen: *listen, conns: *conns, period: *period, timeout: *timeout})

	default:
		fail("unknown command %q", cmd)
	}
}
