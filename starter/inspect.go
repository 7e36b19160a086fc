package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/pkgsig"
)

func packageCommand(e *appEnv) *cli.Command {
	return &cli.Command{
		Name:   "package",
		Usage:  "work with upgrade packages",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:      "inspect",
				Usage:     "compute a package's md5, sha256 and size, for `starter upgrade`",
				UsageText: "starter package inspect --url U [--json]",
				Description: "U is an http(s) URL (downloaded and hashed as it streams, never stored),\n" +
					"a local file path or a file:// URL. Needs no server.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "url", Usage: "http(s) `URL`, file path or file:// URL of the package (required)"},
					&cli.BoolFlag{Name: "json", Usage: "print one JSON object"},
				},
				Before: requireFlags("url"),
				Action: e.inspectAction,
			},
			keygenCommand(e),
			signCommand(e),
			verifyCommand(e),
		},
	}
}

// packageInfo is what `package inspect` reports.
type packageInfo struct {
	// URL is the http(s) URL given, which devices can download from; empty for a local file.
	URL string `json:"url,omitempty"`
	// Path is the local file read, for a path or file:// URL.
	Path   string `json:"path,omitempty"`
	MD5    string `json:"md5"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

func (e *appEnv) inspectAction(cCtx *cli.Context) error {
	src, err := parseSource(cCtx.String("url"))
	if err != nil {
		return usageErrorf(cCtx, "--url: %v", err)
	}
	info, err := inspectPackage(cCtx.Context, src)
	if err != nil {
		return err
	}
	if cCtx.Bool("json") {
		return writeJSON(e.out, info)
	}
	if info.URL != "" {
		fmt.Fprintf(e.out, "url     %s\n", info.URL)
	} else {
		fmt.Fprintf(e.out, "file    %s\n", info.Path)
	}
	fmt.Fprintf(e.out, "md5     %s\nsha256  %s\nsize    %d\n\n", info.MD5, info.SHA256, info.Size)
	fragment := fmt.Sprintf("--md5 %s --size %d", info.MD5, info.Size)
	if info.URL != "" {
		fmt.Fprintf(e.out, "--url %s %s\n", shellQuote(info.URL), fragment)
	} else {
		fmt.Fprintf(e.out, "--url <http(s) URL devices download it from> %s\n", fragment)
	}
	return nil
}

// source is where a package is read from: an http(s) URL or a local file.
type source struct {
	url  string // http(s)
	path string // local file
}

// parseSource tells an http(s) URL from a file path or file:// URL.
func parseSource(raw string) (source, error) {
	if raw == "" {
		return source{}, errors.New("empty")
	}
	scheme, _, hasScheme := strings.Cut(raw, "://")
	if !hasScheme {
		abs, err := filepath.Abs(raw)
		if err != nil {
			return source{}, fmt.Errorf("file path %q: %w", raw, err)
		}
		return source{path: abs}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return source{}, fmt.Errorf("not a URL: %w", err)
	}
	switch strings.ToLower(scheme) {
	case "http", "https":
		if u.Host == "" {
			return source{}, fmt.Errorf("%q has no host", raw)
		}
		return source{url: raw}, nil
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return source{}, fmt.Errorf("%q: a file:// URL must name a local file (file:///path)", raw)
		}
		if u.Path == "" {
			return source{}, fmt.Errorf("%q names no file", raw)
		}
		return source{path: filepath.FromSlash(u.Path)}, nil
	default:
		return source{}, fmt.Errorf("scheme %q is not supported: use http, https, file or a file path", scheme)
	}
}

// inspectPackage reads a package once, computing its md5, sha256 and size as it streams.
func inspectPackage(ctx context.Context, src source) (packageInfo, error) {
	var r io.ReadCloser
	var name string
	if src.url != "" {
		name = credential.RedactURL(src.url)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, src.url, nil)
		if err != nil {
			return packageInfo{}, fmt.Errorf("request %s: %w", name, err)
		}
		client := &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			TLSHandshakeTimeout:   15 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
		}}
		defer client.CloseIdleConnections()
		resp, err := client.Do(req)
		if err != nil {
			return packageInfo{}, fmt.Errorf("download %s: %w", name, err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return packageInfo{}, fmt.Errorf("download %s: the server answered %s", name, resp.Status)
		}
		r = resp.Body
	} else {
		name = src.path
		fi, err := os.Stat(src.path)
		if err != nil {
			return packageInfo{}, fmt.Errorf("package file: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return packageInfo{}, fmt.Errorf("package file %s is not a regular file", src.path)
		}
		f, err := os.Open(src.path)
		if err != nil {
			return packageInfo{}, fmt.Errorf("package file: %w", err)
		}
		r = f
	}
	defer r.Close()
	d, err := pkgsig.HashReader(r)
	if err != nil {
		return packageInfo{}, fmt.Errorf("read %s after %d bytes: %w", name, d.Size, err)
	}
	if d.Size == 0 {
		return packageInfo{}, fmt.Errorf("%s is empty: a package must have at least one byte", name)
	}
	return packageInfo{URL: src.url, Path: src.path, MD5: d.MD5, SHA256: d.SHA256, Size: d.Size}, nil
}

// shellQuote quotes s for a POSIX shell when it holds anything but safe characters.
func shellQuote(s string) string {
	safe := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:@%+=,~", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
