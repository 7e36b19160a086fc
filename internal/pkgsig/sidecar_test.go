package pkgsig

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testSidecar(t *testing.T) Sidecar {
	t.Helper()
	_, priv := newKey(t)
	p := testPackage()
	sig, err := Sign(priv, p)
	if err != nil {
		t.Fatal(err)
	}
	return Sidecar{Type: p.Type, Version: p.Version, Size: p.Size, MD5: strings.Repeat("c", 32), SHA256: p.SHA256, Sig: sig, KeyID: "release"}
}

func TestSidecar(t *testing.T) {
	s := testSidecar(t)
	path := filepath.Join(t.TempDir(), "fw-2.0.bin.sig.json")
	if err := WriteSidecar(path, s); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSidecar(path)
	if err != nil || got != s {
		t.Fatalf("ReadSidecar() = %+v, %v; want %+v", got, err, s)
	}
	if got.Package() != testPackage() {
		t.Errorf("Package() = %+v", got.Package())
	}
	var fields map[string]any
	data, _ := os.ReadFile(path)
	if err := json.Unmarshal(data, &fields); err != nil || len(fields) != 7 {
		t.Fatalf("sidecar file %s: %v", data, err)
	}
	for _, k := range []string{"type", "version", "size", "md5", "sha256", "sig", "key_id"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("sidecar lacks %q: %s", k, data)
		}
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Errorf("sidecar mode %v, want 0644", fi.Mode())
	}

	// Writing again replaces it; an invalid sidecar is never written, and the old one stays.
	s.Version = "2.1"
	if err := WriteSidecar(path, s); err != nil {
		t.Fatal(err)
	}
	bad := s
	bad.Sig = ""
	if err := WriteSidecar(path, bad); err == nil || !strings.Contains(err.Error(), "sig and key_id are required") {
		t.Fatalf("WriteSidecar(unsigned) = %v", err)
	}
	if got, err := ReadSidecar(path); err != nil || got.Version != "2.1" {
		t.Fatalf("after a refused write: %+v, %v", got, err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
	if err := WriteSidecar(filepath.Join(t.TempDir(), "no", "dir.json"), s); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("WriteSidecar(into a missing directory) = %v", err)
	}
}

func TestReadSidecarRefuses(t *testing.T) {
	good := testSidecar(t)
	encode := func(edit func(m map[string]any)) string {
		b, _ := json.Marshal(good)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		edit(m)
		b, _ = json.Marshal(m)
		return string(b)
	}
	tests := []struct{ name, data, want string }{
		{"not JSON", "type=firmware", "not a JSON object"},
		{"trailing data", encode(func(map[string]any) {}) + "{}", "trailing data"},
		{"size as a string", encode(func(m map[string]any) { m["size"] = "4096" }), "not a JSON object"},
		{"no sig", encode(func(m map[string]any) { delete(m, "sig") }), "sig and key_id are required"},
		{"no key_id", encode(func(m map[string]any) { delete(m, "key_id") }), "sig and key_id are required"},
		{"bad sha256", encode(func(m map[string]any) { m["sha256"] = "abc" }), "sha256 must be 64 lowercase hex"},
		{"bad md5", encode(func(m map[string]any) { m["md5"] = "ABC" }), "md5 must be 32 lowercase hex"},
		{"bad sig", encode(func(m map[string]any) { m["sig"] = "abc=" }), "sig must be 64 bytes"},
		{"bad key_id", encode(func(m map[string]any) { m["key_id"] = "a/b" }), "key_id must be"},
		{"bad type", encode(func(m map[string]any) { m["type"] = "" }), `"type" must be`},
		{"size 0", encode(func(m map[string]any) { m["size"] = 0 }), "size must be more than 0"},
		{"too large", `{"pad":"` + strings.Repeat("x", maxSidecarSize) + `"}`, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.json")
			if err := os.WriteFile(path, []byte(tt.data), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := ReadSidecar(path)
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "invalid message") {
				t.Fatalf("ReadSidecar() = %v, want an error about %q", err, tt.want)
			}
		})
	}
	if _, err := ReadSidecar(filepath.Join(t.TempDir(), "none.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadSidecar(missing) = %v", err)
	}
}
