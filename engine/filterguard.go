package engine

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	exprrt "github.com/expr-lang/expr/vm/runtime"
)

// A filter's VM counts the memory of the arrays and maps it builds (expr's
// memory budget) but not of strings: `reduce(1..34, #acc + #acc, "x")`
// would build 16 GiB. The filter's string operations that can grow a
// string (+, repeat, join, replace) are rewritten at compile time into
// calls of checked equivalents, which fail the change once a string would
// be longer than the pillow's memory budget.

const stringBudgetMsg = "a string would be longer than"

// filterGuards are the checked functions, for a budget of max bytes.
func filterGuards(limit int64) []expr.Option {
	check := func(n int64) error {
		if n > limit {
			return fmt.Errorf("filter: %s %s", stringBudgetMsg, ByteSize(limit))
		}
		return nil
	}
	return []expr.Option{
		expr.Patch(stringOps{}),
		expr.Function("_ptop_concat", func(p ...any) (any, error) {
			a, b := p[0].(string), p[1].(string)
			if err := check(int64(len(a)) + int64(len(b))); err != nil {
				return nil, err
			}
			return a + b, nil
		}, new(func(string, string) string)),
		expr.Function("_ptop_add", func(p ...any) (any, error) {
			if a, ok := p[0].(string); ok {
				if b, ok := p[1].(string); ok {
					if err := check(int64(len(a)) + int64(len(b))); err != nil {
						return nil, err
					}
					return a + b, nil
				}
			}
			return exprrt.Add(p[0], p[1]), nil
		}, new(func(any, any) any)),
		expr.Function("_ptop_repeat", func(p ...any) (any, error) {
			s := p[0].(string)
			n := reflect.ValueOf(p[1]).Int()
			if n < 0 {
				return nil, fmt.Errorf("filter: repeat: negative count")
			}
			if n > 0 && int64(len(s)) > limit/n {
				return nil, check(limit + 1)
			}
			return strings.Repeat(s, int(n)), nil
		}, new(func(string, int) string)),
		expr.Function("_ptop_replace", func(p ...any) (any, error) {
			s, old, repl := p[0].(string), p[1].(string), p[2].(string)
			if len(repl) > len(old) {
				if err := check(int64(len(s)) + int64(strings.Count(s, old))*int64(len(repl)-len(old))); err != nil {
					return nil, err
				}
			}
			return strings.ReplaceAll(s, old, repl), nil
		}, new(func(string, string, string) string)),
		expr.Function("_ptop_join", func(p ...any) (any, error) {
			sep := ""
			if len(p) > 1 {
				sep = p[1].(string)
			}
			v := reflect.ValueOf(p[0])
			if v.Kind() != reflect.Slice && v.Kind() != reflect.Array {
				return nil, fmt.Errorf("filter: join: expected an array, got %T", p[0])
			}
			parts := make([]string, v.Len())
			size := int64(len(sep)) * int64(max(v.Len()-1, 0))
			for i := range parts {
				s, ok := v.Index(i).Interface().(string)
				if !ok {
					return nil, fmt.Errorf("filter: join: item %d is %T, not a string", i, v.Index(i).Interface())
				}
				parts[i] = s
				size += int64(len(s))
			}
			if err := check(size); err != nil {
				return nil, err
			}
			return strings.Join(parts, sep), nil
		}, new(func(any) string), new(func(any, string) string)),
	}
}

// stringOps rewrites + on anything but numbers, and the builtins repeat,
// join and replace, into the checked functions.
type stringOps struct{}

func isNumber(t reflect.Type) bool {
	if t == nil {
		return false
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

func isString(t reflect.Type) bool { return t != nil && t.Kind() == reflect.String }

func (stringOps) Visit(node *ast.Node) {
	switch n := (*node).(type) {
	case *ast.BinaryNode:
		if n.Operator != "+" {
			return
		}
		lt, rt := n.Left.Type(), n.Right.Type()
		if isNumber(lt) && isNumber(rt) {
			return
		}
		name := "_ptop_add"
		if isString(lt) && isString(rt) {
			name = "_ptop_concat"
		}
		ast.Patch(node, &ast.CallNode{Callee: &ast.IdentifierNode{Value: name}, Arguments: []ast.Node{n.Left, n.Right}})
	case *ast.BuiltinNode:
		switch n.Name {
		case "repeat", "join", "replace":
			ast.Patch(node, &ast.CallNode{Callee: &ast.IdentifierNode{Value: "_ptop_" + n.Name}, Arguments: n.Arguments})
		}
	}
}
