package main

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// testPackage is a package body large enough to be streamed in several reads.
var testPackage = []byte(strings.Repeat("OTAflow firmware 1.1\n", 50000))

func md5Hex(b []byte) string {
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func TestPackageInspect(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fw/1.1.bin":
			w.Header().Set("Content-Length", strconv.Itoa(len(testPackage)))
			_, _ = w.Write(testPackage)
		case "/empty.bin":
			w.Header().Set("Content-Length", "0")
		case "/broken.bin": // promises more than it sends
			w.Header().Set("Content-Length", strconv.Itoa(len(testPackage)+10))
			_, _ = w.Write(testPackage)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	dir := t.TempDir()
	file := filepath.Join(dir, "fw 1.1.bin")
	if err := os.WriteFile(file, testPackage, 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.bin")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wantMD5, wantSHA256, wantSize := md5Hex(testPackage), sha256Hex(testPackage), strconv.Itoa(len(testPackage))

	ok := []struct {
		name     string
		url      string
		fragment string // the ready-to-paste line
	}{
		{"http", srv.URL + "/fw/1.1.bin", "--url " + srv.URL + "/fw/1.1.bin --md5 " + wantMD5 + " --size " + wantSize},
		{"http with query", srv.URL + "/fw/1.1.bin?token=a&b=c", "--url '" + srv.URL + "/fw/1.1.bin?token=a&b=c' --md5 " + wantMD5},
		{"file path", file, "--md5 " + wantMD5 + " --size " + wantSize},
		{"file URL", "file://" + filepath.ToSlash(file), "--md5 " + wantMD5 + " --size " + wantSize},
	}
	for _, tt := range ok {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, context.Background(), offline("package", "inspect", "--url", tt.url)...)
			r.check(t, 0)
			for _, want := range []string{"md5     " + wantMD5 + "\n", "sha256  " + wantSHA256 + "\n", "size    " + wantSize + "\n", tt.fragment} {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("output lacks %q:\n%s", want, r.stdout)
				}
			}

			r = runCLI(t, context.Background(), offline("package", "inspect", "--json", "--url", tt.url)...)
			r.check(t, 0)
			var info packageInfo
			if err := json.Unmarshal([]byte(r.stdout), &info); err != nil {
				t.Fatalf("--json output is not one JSON object: %v\n%s", err, r.stdout)
			}
			if info.MD5 != wantMD5 || info.SHA256 != wantSHA256 || info.Size != int64(len(testPackage)) {
				t.Errorf("--json gives md5 %s sha256 %s size %d, want %s %s %d", info.MD5, info.SHA256, info.Size, wantMD5, wantSHA256, len(testPackage))
			}
			if (info.URL != "") == (info.Path != "") {
				t.Errorf("--json should give exactly one of url and path: %+v", info)
			}
		})
	}

	bad := []struct {
		name string
		url  string
		want []string
	}{
		{"404", srv.URL + "/fw/missing.bin", []string{"404 Not Found", "/fw/missing.bin"}},
		{"empty download", srv.URL + "/empty.bin", []string{"is empty"}},
		{"truncated download", srv.URL + "/broken.bin", []string{"read ", "unexpected EOF"}},
		{"server down", "http://127.0.0.1:1/fw.bin", []string{"download http://127.0.0.1:1/fw.bin"}},
		{"missing file", filepath.Join(dir, "nope.bin"), []string{"no such file"}},
		{"empty file", empty, []string{"is empty"}},
		{"directory", dir, []string{"not a regular file"}},
		{"password hidden", "http://user:hunter2@127.0.0.1:1/fw.bin", []string{"user:xxxxx@"}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, context.Background(), offline("package", "inspect", "--url", tt.url)...)
			r.check(t, exitFailure, tt.want...)
			if strings.Contains(r.stderr, "hunter2") {
				t.Errorf("the error shows the password: %s", r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("a failed inspect wrote to stdout:\n%s", r.stdout)
			}
		})
	}
}

func TestShellQuote(t *testing.T) {
	tests := map[string]string{
		"https://f.example.com/fw/1.1.bin": "https://f.example.com/fw/1.1.bin",
		"https://f/x?a=1&b=2":              "'https://f/x?a=1&b=2'",
		"it's":                             `'it'\''s'`,
	}
	for in, want := range tests {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %q, want %q", in, got, want)
		}
	}
}
