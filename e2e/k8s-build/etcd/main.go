// Command etcd runs etcd's own entry point (go.etcd.io/etcd/server/v3/etcdmain)
// at the version pinned in go.mod. etcd's main module has replace directives,
// so `go install go.etcd.io/etcd/v3@v` is refused; this wrapper is the workaround.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
