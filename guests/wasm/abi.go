package wasm

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/casparianflow/casparian/host/guest"
	abi "github.com/casparianflow/casparian/sdk/wasm"
)

type signature struct{ params, results []api.ValueType }

func (s signature) String() string {
	return fmt.Sprintf("(%s) -> (%s)", typeNames(s.params), typeNames(s.results))
}

func typeNames(ts []api.ValueType) string {
	n := make([]string, len(ts))
	for i, t := range ts {
		n[i] = api.ValueTypeName(t)
	}
	return strings.Join(n, ", ")
}

var i32 = api.ValueTypeI32

// requiredExports are the functions every module exports (docs/WASM_ABI.md).
var requiredExports = map[string]signature{
	abi.ExportABIVersion: {nil, []api.ValueType{i32}},
	abi.ExportAlloc:      {[]api.ValueType{i32}, []api.ValueType{i32}},
	abi.ExportFree:       {[]api.ValueType{i32, i32}, nil},
	abi.ExportInfo:       {nil, []api.ValueType{i32}},
	abi.ExportProcess:    {[]api.ValueType{i32, i32}, []api.ValueType{i32}},
}

// hostImports are the functions the casparian host module provides.
var hostImports = map[string]signature{
	abi.ImportEmit:     {[]api.ValueType{i32, i32, i32, i32}, []api.ValueType{i32}},
	abi.ImportLog:      {[]api.ValueType{i32, i32, i32}, nil},
	abi.ImportSetInfo:  {[]api.ValueType{i32, i32}, nil},
	abi.ImportSetError: {[]api.ValueType{i32, i32}, nil},
}

const buildHint = "build a Go plugin with GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared (its main calls serve.Main); " +
	"a module in another language must implement docs/WASM_ABI.md"

// checkModule checks a compiled module's imports and exports against the ABI
// before anything runs, so a wrong module fails with one clear message.
func checkModule(cm wazero.CompiledModule, label string, limitPages uint32) error {
	fail := func(hint, format string, args ...any) error {
		return &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1, Hint: hint,
			Message: fmt.Sprintf("plugin %s: ", label) + fmt.Sprintf(format, args...)}
	}
	exports := cm.ExportedFunctions()
	_, hasStart := exports[abi.ExportStart]
	_, hasInit := exports[abi.ExportInitialize]
	if hasStart && !hasInit {
		return fail("build it with -buildmode=c-shared (GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared): a reactor module keeps running after _initialize, so the host can call its exports",
			"the module is a WASI command (it exports _start): the host needs a reactor module")
	}
	for _, f := range cm.ImportedFunctions() {
		mod, name, _ := f.Import()
		switch mod {
		case wasi_snapshot_preview1.ModuleName:
		case abi.ImportModule:
			want, ok := hostImports[name]
			if !ok {
				return fail("the host provides "+strings.Join(sortedKeys(hostImports), ", ")+" (ABI version "+fmt.Sprint(abi.ABIVersion)+")",
					"the module imports %s.%s, which the host does not provide", mod, name)
			}
			if err := checkSignature(f, want); err != nil {
				return fail(buildHint, "import %s.%s: %v", mod, name, err)
			}
		default:
			return fail("a plugin may import only from the casparian and wasi_snapshot_preview1 modules",
				"the module imports %s.%s, which the host does not provide", mod, name)
		}
	}
	var missing []string
	for name := range requiredExports {
		if _, ok := exports[name]; !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fail(buildHint, "the module does not export %s, so it is not a Casparian WASM plugin (ABI version %d)",
			strings.Join(missing, ", "), abi.ABIVersion)
	}
	for name, want := range requiredExports {
		if err := checkSignature(exports[name], want); err != nil {
			return fail(buildHint, "export %s: %v", name, err)
		}
	}
	if hasInit {
		if err := checkSignature(exports[abi.ExportInitialize], signature{}); err != nil {
			return fail(buildHint, "export %s: %v", abi.ExportInitialize, err)
		}
	}
	mem, ok := cm.ExportedMemories()[abi.ExportMemory]
	if !ok {
		return fail(buildHint, "the module does not export its linear memory as %q", abi.ExportMemory)
	}
	if mem.Min() > limitPages {
		return &guest.Error{Kind: guest.ErrResourceLimit, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s: the module needs %d MiB of memory to start, above the %d MiB limit", label, mem.Min()/16, limitPages/16),
			Hint:    "raise the WASM memory limit"}
	}
	if len(cm.ImportedMemories()) > 0 {
		return fail(buildHint, "the module imports its memory; it must define and export it")
	}
	return nil
}

func checkSignature(f api.FunctionDefinition, want signature) error {
	got := signature{f.ParamTypes(), f.ResultTypes()}
	if !slices.Equal(got.params, want.params) || !slices.Equal(got.results, want.results) {
		return fmt.Errorf("signature %s, the ABI says %s", got, want)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}
