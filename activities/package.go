package activities

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/pkgsig"
)

// CheckPackage checks a package before any device is sent it: its signature against the
// worker's policy (Activities.Packages) first, then, downloading it once (streamed, hashed as
// it goes, never stored), its size, md5 and, when announced, sha256. A package that fails a
// check, or a URL that answers 4xx, is a permanent failure whose type names the check (see
// ota.ErrTypeBadSignature and the others); network errors and 5xx are retried.
func (a *Activities) CheckPackage(ctx context.Context, p ota.PackageCheck) error {
	if err := a.checkSignature(pkgsig.Package{Type: p.Type, Version: p.Version, Size: p.Size, SHA256: p.SHA256}, p.Sig, p.KeyID); err != nil {
		return err
	}
	client := a.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL, nil)
	if err != nil {
		return temporal.NewNonRetryableApplicationError("bad package URL: "+err.Error(), ota.ErrTypeBadPackageURL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch package %s: %w", p.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 && resp.StatusCode < 500 {
		return temporal.NewNonRetryableApplicationError(fmt.Sprintf("package %s: HTTP %s", p.URL, resp.Status), ota.ErrTypePackageMismatch, nil)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch package %s: HTTP %s", p.URL, resp.Status)
	}
	got, err := pkgsig.HashReader(&heartbeatReader{ctx: ctx, r: resp.Body})
	if err != nil {
		return fmt.Errorf("read package %s: %w", p.URL, err)
	}
	if got.Size != p.Size || got.MD5 != p.MD5 {
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("package %s is %d bytes with md5 %s, but the upgrade says %d bytes with md5 %s", p.URL, got.Size, got.MD5, p.Size, p.MD5),
			ota.ErrTypePackageMismatch, errors.New("package mismatch"))
	}
	if p.SHA256 != "" {
		if err := pkgsig.CheckSHA256(p.SHA256, got.SHA256); err != nil {
			return packageCheckError(err)
		}
	}
	return nil
}

// checkSignature applies the worker's package policy to a package and its signature. A
// worker without trusted keys (and so without the require-signatures policy, which needs
// them) leaves signatures to the devices.
func (a *Activities) checkSignature(p pkgsig.Package, sig, keyID string) error {
	if a.Packages.Keys.Len() == 0 && !a.Packages.RequireSignature {
		return nil
	}
	if err := a.Packages.Check(p, sig, keyID); err != nil {
		return packageCheckError(err)
	}
	return nil
}

// packageCheckErrorTypes are the error types of pkgsig's checks.
var packageCheckErrorTypes = []struct {
	check   error
	errType string
}{
	{pkgsig.ErrMissingSignature, ota.ErrTypeMissingSignature},
	{pkgsig.ErrUnknownKey, ota.ErrTypeUnknownKey},
	{pkgsig.ErrBadSignature, ota.ErrTypeBadSignature},
	{pkgsig.ErrSHA256Mismatch, ota.ErrTypeSHA256Mismatch},
}

// packageCheckError makes a failed package check a non-retryable error of the check's type,
// whose message is the check's own text (it starts with the check's name, as a device's desc
// does).
func packageCheckError(err error) error {
	for _, c := range packageCheckErrorTypes {
		if errors.Is(err, c.check) {
			return temporal.NewNonRetryableApplicationError(err.Error(), c.errType, nil)
		}
	}
	return temporal.NewNonRetryableApplicationError(err.Error(), ota.ErrTypePackageMismatch, nil)
}

// heartbeatReader heartbeats the running activity as a download goes on.
type heartbeatReader struct {
	ctx  context.Context
	r    io.Reader
	n    int64
	last time.Time
}

func (h *heartbeatReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.n += int64(n)
	if now := time.Now(); activity.IsActivity(h.ctx) && now.Sub(h.last) > 5*time.Second {
		h.last = now
		activity.RecordHeartbeat(h.ctx, h.n)
	}
	return n, err
}
