// Command etcd is upstream etcd's server entry point, compiled at the version pinned in go.mod so the
// control plane that virtfleet tests against needs nothing but the Go module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
