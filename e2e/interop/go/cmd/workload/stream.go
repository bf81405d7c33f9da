package main

// workload x509stream: the raw FetchX509SVID stream (go-spiffe's generated Workload API client, so every
// message is counted as sent, including ones an X509Source would fold together). For the side-by-side
// benchmark against SPIRE (e2e/interop/benches/side_by_side.rs). One line per message on stdout:
//
//	msg <unix ns> <svids> <bytes>
//	add <unix ns> <spiffe id>       for each SPIFFE ID the message has and the one before had not
//	del <unix ns> <spiffe id>       for each it had and this one has not

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

func x509Stream() {
	addr := os.Getenv("SPIFFE_ENDPOINT_SOCKET")
	if !strings.HasPrefix(addr, "unix://") {
		fail("SPIFFE_ENDPOINT_SOCKET must be unix:///path, got %q", addr)
	}
	conn, err := grpc.NewClient("unix:"+strings.TrimPrefix(addr, "unix://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		fail("dial: %v", err)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "workload.spiffe.io", "true")
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		fail("FetchX509SVID: %v", err)
	}
	out := bufio.NewWriterSize(os.Stdout, 1<<16)
	seen := map[string]bool{}
	for {
		msg, err := stream.Recv()
		if err != nil {
			_ = out.Flush()
			fail("stream: %v", err)
		}
		now := time.Now().UnixNano()
		fmt.Fprintf(out, "msg %d %d %d\n", now, len(msg.Svids), proto.Size(msg))
		next := make(map[string]bool, len(msg.Svids))
		for _, s := range msg.Svids {
			next[s.SpiffeId] = true
			if !seen[s.SpiffeId] {
				fmt.Fprintf(out, "add %d %s\n", now, s.SpiffeId)
			}
		}
		for id := range seen {
			if !next[id] {
				fmt.Fprintf(out, "del %d %s\n", now, id)
			}
		}
		seen = next
		if err := out.Flush(); err != nil {
			os.Exit(0) // the reader went away
		}
	}
}
