// Command benthos is Benthos v4 with only its io and pure components, for
// scripts/bench.sh to run the same work as a ptop pillow (a file of
// changes through a filter and a mapping into a file) side by side.
package main

import (
	"context"

	_ "github.com/redpanda-data/benthos/v4/public/components/io"
	_ "github.com/redpanda-data/benthos/v4/public/components/pure"
	"github.com/redpanda-data/benthos/v4/public/service"
)

func main() {
	service.RunCLI(context.Background())
}
