package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var missing = map[string]bool{"CAP_SYS_RESOURCE": true}

const bundleConfig = `{"ociVersion":"1.0.2","process":{"args":["/sbin/init"],
 "capabilities":{"bounding":["CAP_CHOWN","CAP_SYS_RESOURCE","CAP_SYS_ADMIN"],
 "effective":["CAP_SYS_RESOURCE"],"permitted":["CAP_CHOWN","CAP_SYS_RESOURCE"]},
 "rlimits":[{"type":"RLIMIT_NOFILE","hard":18446744073709551615,"soft":1048576}]},
 "root":{"path":"rootfs"}}`

func capsOf(t *testing.T, raw []byte, inProcess bool) map[string][]string {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if inProcess {
		doc = doc["process"].(map[string]any)
	}
	out := map[string][]string{}
	for set, list := range doc["capabilities"].(map[string]any) {
		out[set] = []string{}
		for _, c := range list.([]any) {
			out[set] = append(out[set], c.(string))
		}
	}
	return out
}

func TestCreateRemovesMissingCapabilitiesAndKeepsEverythingElse(t *testing.T) {
	bundle := t.TempDir()
	path := filepath.Join(bundle, "config.json")
	if err := os.WriteFile(path, []byte(bundleConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--root", "/run/runc", "--log-format", "json", "create", "--bundle", bundle, "ctr-id"}
	if err := rewriteInputs(args, missing); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	want := map[string][]string{
		"bounding":  {"CAP_CHOWN", "CAP_SYS_ADMIN"},
		"effective": {},
		"permitted": {"CAP_CHOWN"},
	}
	if got := capsOf(t, raw, true); !reflect.DeepEqual(got, want) {
		t.Fatalf("capabilities = %v, want %v", got, want)
	}
	// 64-bit limits survive the round trip exactly (a float64 would round them).
	if !strings.Contains(string(raw), "18446744073709551615") || !strings.Contains(string(raw), `"root":{"path":"rootfs"}`) {
		t.Fatalf("other fields changed: %s", raw)
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o600 {
		t.Fatalf("mode changed to %v", info.Mode().Perm())
	}
}

func TestBundleDefaultsToTheWorkingDirectoryAndEqualsFormWorks(t *testing.T) {
	bundle := t.TempDir()
	path := filepath.Join(bundle, "config.json")
	_ = os.WriteFile(path, []byte(bundleConfig), 0o600)
	if err := rewriteInputs([]string{"run", "--bundle=" + bundle, "id"}, missing); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	if strings.Contains(string(raw), "CAP_SYS_RESOURCE") {
		t.Fatalf("not removed with --bundle=: %s", raw)
	}
}

func TestExecRewritesTheProcessFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "process.json")
	_ = os.WriteFile(path, []byte(`{"args":["sh"],"capabilities":{"bounding":["CAP_SYS_RESOURCE","CAP_KILL"]}}`), 0o600)
	if err := rewriteInputs([]string{"exec", "--process", path, "--detach", "id"}, missing); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	if got := capsOf(t, raw, false)["bounding"]; !reflect.DeepEqual(got, []string{"CAP_KILL"}) {
		t.Fatalf("bounding = %v", got)
	}
}

func TestOtherCommandsAndCompleteSetsWriteNothing(t *testing.T) {
	bundle := t.TempDir()
	path := filepath.Join(bundle, "config.json")
	_ = os.WriteFile(path, []byte(bundleConfig), 0o600)
	for _, args := range [][]string{{"state", "id"}, {"delete", "--force", "id"}, {"start", "id"}} {
		if err := rewriteInputs(append(args, "--bundle", bundle), missing); err != nil {
			t.Fatal(err)
		}
	}
	if err := rewriteInputs([]string{"create", "--bundle", bundle, "id"}, map[string]bool{}); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(path); string(raw) != bundleConfig {
		t.Fatalf("rewritten: %s", raw)
	}
}

func TestMissingCapabilitiesReadsTheBoundingSet(t *testing.T) {
	got, err := missingCapabilities()
	if err != nil {
		t.Fatal(err)
	}
	for name := range got {
		if !strings.HasPrefix(name, "CAP_") {
			t.Fatalf("unexpected name %q", name)
		}
	}
}

func TestOOMScoreAdjIsRaisedToOursWithoutSysResource(t *testing.T) {
	bundle := t.TempDir()
	path := filepath.Join(bundle, "config.json")
	_ = os.WriteFile(path, []byte(`{"process":{"oomScoreAdj":-1000,"capabilities":{}}}`), 0o600)
	if err := rewriteInputs([]string{"create", "--bundle", bundle, "id"}, missing); err != nil {
		t.Fatal(err)
	}
	own, _ := os.ReadFile("/proc/self/oom_score_adj")
	raw, _ := os.ReadFile(path)
	if want := `"oomScoreAdj":` + strings.TrimSpace(string(own)); !strings.Contains(string(raw), want) {
		t.Fatalf("%s does not contain %s", raw, want)
	}
	// With the capability present nothing is clamped.
	_ = os.WriteFile(path, []byte(`{"process":{"oomScoreAdj":-1000}}`), 0o600)
	_ = rewriteInputs([]string{"create", "--bundle", bundle, "id"}, map[string]bool{"CAP_BPF": true})
	if raw, _ := os.ReadFile(path); !strings.Contains(string(raw), "-1000") {
		t.Fatalf("clamped although CAP_SYS_RESOURCE is held: %s", raw)
	}
}
