package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/conformance"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/testenv"
)

func TestConformanceList(t *testing.T) {
	out, errs, rc := runAdmin(t, cmdConformance, "--list")
	if rc != 0 || errs != "" {
		t.Fatalf("--list: rc=%d stderr=%q", rc, errs)
	}
	for _, c := range conformance.Cases() {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(c.Name) + ` +` + regexp.QuoteMeta(c.Doc) + `$`).MatchString(out) {
			t.Errorf("--list lacks %s and its doc:\n%s", c.Name, out)
		}
	}

	// --only filters the list, repeated or comma-separated.
	out, _, rc = runAdmin(t, cmdConformance, "--list", "--only", "types/i8", "--only", "stream/empty,error/exit")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if rc != 0 || len(lines) != 4 || !strings.HasPrefix(lines[1], "types/i8 ") ||
		!strings.HasPrefix(lines[2], "stream/empty ") || !strings.HasPrefix(lines[3], "error/exit ") {
		t.Errorf("--list --only: rc=%d\n%s", rc, out)
	}
}

func TestConformancePython(t *testing.T) {
	py := testenv.Python(t)
	dir := t.TempDir()
	t.Chdir(dir)
	out, errs, rc := runAdmin(t, cmdConformance, "--guest", "python", "--python", py, "--only", "types/i8,stream/empty")
	t.Logf("stdout:\n%s", out)
	if rc != 0 || errs != "" {
		t.Fatalf("rc=%d stderr=%q", rc, errs)
	}
	for _, re := range []string{
		`(?m)^python: Python 3\.\d+\.\d+, pyarrow \S+ \(.+\); 2 of \d+ cases$`,
		`(?m)^CASE +RESULT +DURATION +MESSAGE$`,
		`(?m)^types/i8 +PASS +\d+(\.\d+)?m?s +-$`,
		`(?m)^stream/empty +PASS +\d+(\.\d+)?m?s +-$`,
		`(?m)^python: 2 passed, 0 failed in \d+(\.\d+)?m?s; report: conformance-python\.json$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("stdout does not match %s", re)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "conformance-python.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep conformance.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, b)
	}
	if rep.Kind != guest.KindPython || rep.Started.IsZero() || len(rep.Results) != 2 ||
		rep.Results[0].Case != "types/i8" || rep.Results[1].Case != "stream/empty" {
		t.Fatalf("report = %+v", rep)
	}
	for _, r := range rep.Results {
		if !r.Passed || r.Duration <= 0 {
			t.Errorf("result %+v", r)
		}
	}
}

func TestConformanceUsageErrors(t *testing.T) {
	t.Chdir(t.TempDir())
	notExec := filepath.Join(t.TempDir(), "refplugin")
	adminWriteFile(t, notExec, "#!/bin/sh\n")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown kind", []string{"--guest", "java"}, `unknown guest kind "java": want python, goplugin, wasm or all`},
		{"no kind", nil, "--guest is required (python, goplugin, wasm or all)"},
		{"argument", []string{"--guest", "python", "extra"}, `unexpected argument "extra"`},
		{"only matches nothing", []string{"--guest", "python", "--only", "nope"}, "--only nope matches no case; casparian conformance --list shows them"},
		{"big-mb", []string{"--guest", "python", "--big-mb", "0"}, "--big-mb 0: want 1 or more"},
		{"plugin with python", []string{"--guest", "python", "--plugin", notExec}, "--plugin applies to --guest goplugin and wasm"},
		{"plugin with all", []string{"--guest", "all", "--plugin", notExec}, "not all"},
		{"report dir", []string{"--guest", "python", "--report", "nodir/r.json"}, "--report nodir/r.json: directory nodir does not exist"},
		{"not executable", []string{"--guest", "goplugin", "--plugin", notExec},
			"goplugin: --plugin " + notExec + " is not executable: the go-plugin reference plugin is an executable built from ./conformance/refplugin"},
		{"missing plugin", []string{"--guest", "goplugin", "--plugin", notExec + ".missing"},
			"goplugin: --plugin " + notExec + ".missing: no such file or directory"},
		{"not wasm", []string{"--guest", "wasm", "--plugin", notExec}, "wasm: --plugin " + notExec + " is not a WebAssembly module"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errs, rc := runAdmin(t, cmdConformance, tc.args...)
			if rc != 2 || !strings.Contains(errs, tc.want) {
				t.Errorf("rc=%d stderr=%q, want 2 and %q", rc, errs, tc.want)
			}
			if strings.Contains(out, "CASE") {
				t.Errorf("ran the suite:\n%s", out)
			}
		})
	}
	if ents, _ := os.ReadDir("."); len(ents) != 0 {
		t.Errorf("a failed start wrote %v", ents)
	}
}

func TestConformanceLocateRefPlugin(t *testing.T) {
	exeDir := t.TempDir()
	elsewhere := t.TempDir()
	root := testenv.RepoRoot()

	// Nothing next to the executable, not in the source tree: what to do.
	_, _, err := locateRefPlugin(guest.KindGoPlugin, "", exeDir, elsewhere)
	if err == nil || !strings.Contains(err.Error(), "no reference plugin at "+filepath.Join(exeDir, "conformance", "refplugin")) ||
		!strings.Contains(err.Error(), "run `make build`") || !strings.Contains(err.Error(), "pass --plugin PATH") {
		t.Errorf("nothing found: %v", err)
	}
	// In the source tree: build from it.
	if p, src, err := locateRefPlugin(guest.KindWASM, "", exeDir, root); p != "" || src != root || err != nil {
		t.Errorf("source tree: %q, %q, %v", p, src, err)
	}
	if isSourceTree(filepath.Join(root, "cmd")) || isSourceTree(elsewhere) {
		t.Error("isSourceTree is true outside the module root")
	}
	// What make build puts next to the executable wins over the source tree.
	goPlugin := filepath.Join(exeDir, "conformance", "refplugin")
	wasmMod := filepath.Join(exeDir, "conformance", "refplugin.wasm")
	adminWriteFile(t, goPlugin, "#!/bin/sh\n")
	if err := os.Chmod(goPlugin, 0o755); err != nil {
		t.Fatal(err)
	}
	adminWriteFile(t, wasmMod, "\x00asm\x01\x00\x00\x00")
	if p, src, err := locateRefPlugin(guest.KindGoPlugin, "", exeDir, root); p != goPlugin || src != "" || err != nil {
		t.Errorf("go-plugin next to the executable: %q, %q, %v", p, src, err)
	}
	if p, _, err := locateRefPlugin(guest.KindWASM, "", exeDir, elsewhere); p != wasmMod || err != nil {
		t.Errorf("WASM next to the executable: %q, %v", p, err)
	}
	// --plugin wins over both.
	if p, _, err := locateRefPlugin(guest.KindWASM, wasmMod, t.TempDir(), elsewhere); p != wasmMod || err != nil {
		t.Errorf("--plugin: %q, %v", p, err)
	}
	if _, _, err := locateRefPlugin(guest.KindGoPlugin, wasmMod, exeDir, root); err == nil ||
		!strings.Contains(err.Error(), "is a WASM module, not a go-plugin executable: use --guest wasm") {
		t.Errorf("a .wasm as go-plugin: %v", err)
	}
}

func TestConformanceTableAndReportNames(t *testing.T) {
	long := strings.Repeat("x", 300)
	var b bytes.Buffer
	printConformanceTable(&b, conformance.Report{Kind: guest.KindWASM, Results: []conformance.Result{
		{Case: "stream/empty", Passed: true, Duration: 1234567 * time.Nanosecond},
		{Case: "error/exit", Passed: false, Duration: 2 * time.Second, Message: "\nfirst line\tof it\nsecond line"},
		{Case: "error/noise", Passed: false, Message: long},
	}})
	want := "CASE          RESULT  DURATION  MESSAGE\n" +
		"stream/empty  PASS    1ms       -\n" +
		"error/exit    FAIL    2s        first line of it\n" +
		"error/noise   FAIL    0s        " + strings.Repeat("x", conformanceMessageWidth-1) + "…\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}

	for _, tc := range []struct {
		flag    string
		several bool
		want    string
	}{
		{"", false, "conformance-goplugin.json"},
		{"", true, "conformance-goplugin.json"},
		{"out/r.json", false, "out/r.json"},
		{"out/r.json", true, "out/r-goplugin.json"},
		{"report", true, "report-goplugin"},
	} {
		if got := reportPath(tc.flag, guest.KindGoPlugin, tc.several); got != tc.want {
			t.Errorf("reportPath(%q, %v) = %q, want %q", tc.flag, tc.several, got, tc.want)
		}
	}
}
