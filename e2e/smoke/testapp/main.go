// Command testapp is the tiny static program inside the smoke test's image
// (docker.io/sigil-e2e/testapp:1). The image has nothing else in it, so the
// few tools the smoke test needs are subcommands here:
//
//	testapp serve [addr]      HTTP server answering "hello from <hostname>"
//	testapp get <url>...      fetch URLs (resolving hosts through the pod's DNS) and print the bodies
//	testapp lookup <name>     print the addresses a name resolves to
//	testapp cat <file>        print a file (e.g. a projected service-account token)
//	testapp ls <dir>          list a directory
//	testapp mount-tmpfs <dir> mount a tmpfs on dir, write dir/mounted, then sleep (checks mount propagation)
//	testapp sleep             sleep forever
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: testapp serve|get|lookup|cat|ls|mount-tmpfs|sleep [arg]")
	}
	arg := ""
	if len(os.Args) > 2 {
		arg = os.Args[2]
	}
	switch os.Args[1] {
	case "serve":
		serve(arg)
	case "get":
		for _, url := range os.Args[2:] {
			get(url)
		}
	case "lookup":
		addrs, err := net.LookupHost(arg)
		if err != nil {
			fail("lookup %s: %v", arg, err)
		}
		fmt.Println(addrs)
	case "cat":
		b, err := os.ReadFile(arg)
		if err != nil {
			fail("%v", err)
		}
		os.Stdout.Write(b)
	case "ls":
		entries, err := os.ReadDir(arg)
		if err != nil {
			fail("%v", err)
		}
		for _, e := range entries {
			fmt.Println(e.Name())
		}
	case "mount-tmpfs":
		if err := syscall.Mount("tmpfs", arg, "tmpfs", 0, "size=1m"); err != nil {
			fail("mount tmpfs on %s: %v", arg, err)
		}
		if err := os.WriteFile(arg+"/mounted", []byte("propagated\n"), 0o644); err != nil {
			fail("%v", err)
		}
		fmt.Printf("mounted tmpfs on %s\n", arg)
		waitSignal()
	case "sleep":
		waitSignal()
	default:
		fail("unknown subcommand %q", os.Args[1])
	}
}

func serve(addr string) {
	if addr == "" {
		addr = ":8080"
	}
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("request %s %s from %s\n", r.Method, r.URL.Path, r.RemoteAddr)
		fmt.Fprintf(w, "hello from %s\n", host)
	})
	fmt.Printf("testapp serving on %s\n", addr)
	go func() {
		if err := http.ListenAndServe(addr, nil); err != nil {
			fail("serve: %v", err)
		}
	}()
	waitSignal()
}

func get(url string) {
	var lastErr error
	client := &http.Client{Timeout: 5 * time.Second}
	for i := 0; i < 30; i++ {
		resp, err := client.Get(url)
		if err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				fmt.Printf("GET %s: %s", url, body)
				return
			}
			err = fmt.Errorf("status %d, read error %v", resp.StatusCode, rerr)
		}
		lastErr = err
		fmt.Printf("attempt %d: %v\n", i+1, err)
		time.Sleep(2 * time.Second)
	}
	fail("GET %s failed: %v", url, lastErr)
}

func waitSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "testapp: "+format+"\n", args...)
	os.Exit(1)
}
