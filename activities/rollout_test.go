package activities_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/ota"
)

func TestCheckPackageHTTPOutcomes(t *testing.T) {
	body := []byte("firmware 1.1")
	sum := md5.Sum(body)
	md5Hex := hex.EncodeToString(sum[:])
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fw.bin":
			_, _ = w.Write(body)
		case "/busy":
			http.Error(w, "try later", http.StatusServiceUnavailable)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	a := &activities.Activities{HTTPClient: srv.Client()}

	tests := []struct {
		name string
		in   ota.PackageCheck
		// wantType is the error type of a permanent failure; "" with wantErr a retried one.
		wantType string
		wantErr  bool
	}{
		{"matches", ota.PackageCheck{URL: srv.URL + "/fw.bin", MD5: md5Hex, Size: int64(len(body))}, "", false},
		{"other md5", ota.PackageCheck{URL: srv.URL + "/fw.bin", MD5: "9e107d9d372bb6826bd81d3542a419d6", Size: int64(len(body))}, ota.ErrTypePackageMismatch, true},
		{"other size", ota.PackageCheck{URL: srv.URL + "/fw.bin", MD5: md5Hex, Size: 1}, ota.ErrTypePackageMismatch, true},
		{"not found", ota.PackageCheck{URL: srv.URL + "/gone.bin", MD5: md5Hex, Size: 1}, ota.ErrTypePackageMismatch, true},
		{"server busy", ota.PackageCheck{URL: srv.URL + "/busy", MD5: md5Hex, Size: 1}, "", true},
		{"space in host", ota.PackageCheck{URL: "http://files example.com/fw.bin", MD5: md5Hex, Size: 1}, ota.ErrTypeBadPackageURL, true},
		{"unclosed IPv6 host", ota.PackageCheck{URL: "http://[::1/fw.bin", MD5: md5Hex, Size: 1}, ota.ErrTypeBadPackageURL, true},
		{"control character", ota.PackageCheck{URL: "http://files.example.com/fw\x7f.bin", MD5: md5Hex, Size: 1}, ota.ErrTypeBadPackageURL, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := a.CheckPackage(context.Background(), tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("CheckPackage = %v, want an error: %v", err, tt.wantErr)
			}
			var appErr *temporal.ApplicationError
			switch {
			case !errors.As(err, &appErr):
				if tt.wantType != "" {
					t.Errorf("CheckPackage = %v, want a permanent failure of type %q", err, tt.wantType)
				}
			case appErr.Type() != tt.wantType || !appErr.NonRetryable():
				t.Errorf("CheckPackage = %v: type %q, non-retryable %v; want type %q, non-retryable",
					err, appErr.Type(), appErr.NonRetryable(), tt.wantType)
			}
		})
	}
}
