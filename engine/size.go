package engine

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// ByteSize is a number of bytes written in YAML as an integer or with a
// unit: "256MiB", "1 GiB", "512KiB", "100MB" (KB, MB and GB are powers of
// 1000, KiB, MiB and GiB of 1024).
type ByteSize int64

var sizeUnits = []struct {
	name string
	n    int64
}{
	{"GiB", 1 << 30},
	{"MiB", 1 << 20},
	{"KiB", 1 << 10},
	{"GB", 1e9},
	{"MB", 1e6},
	{"KB", 1e3},
	{"kB", 1e3},
	{"B", 1},
}

// ParseByteSize reads a size such as "256MiB" or "1048576".
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.name) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.name)), u.n
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("invalid size %q: use a number of bytes or a number with a unit, such as \"256MiB\"", s)
	}
	return ByteSize(n * mult), nil
}

func (b ByteSize) String() string {
	for _, u := range sizeUnits[:3] {
		if b != 0 && int64(b)%u.n == 0 {
			return fmt.Sprintf("%d %s", int64(b)/u.n, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", int64(b))
}

// MarshalYAML writes the size back in its string form.
func (b ByteSize) MarshalYAML() (any, error) { return strings.ReplaceAll(b.String(), " ", ""), nil }

func (b *ByteSize) decodeNode(d *decoder, n *yaml.Node, expand bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.errorf(n, "expected a size such as \"256MiB\", got %s", describe(n))
		return
	}
	n, ok := d.scalar(n, expand)
	if !ok {
		return
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		d.errorf(n, "%v", err)
		return
	}
	*b = v
}
