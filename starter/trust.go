package main

import (
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
)

// Flags of a package's integrity, trust and fit, and of the soak: `upgrade` and the rollout
// commands share them (packageFlags, attemptFlags), and upgradeTemplate reads them.
const (
	flagSHA256             = "sha256"
	flagSig                = "sig"
	flagKeyID              = "key-id"
	flagSidecar            = "sidecar"
	flagRequireSignatures  = "require-signatures"
	flagCompatibleLabel    = "compatible-label"
	flagCompatibleVersions = "compatible-versions"
	flagSoak               = "soak"
)

// sidecarFields are the package flags a --sidecar file supplies: requireFlags does not ask
// for them when it is given.
var sidecarFields = []string{"type", "version", "md5", "size"}

// trustFlags describe the package's integrity (PROTOCOL.md 1.1), the signature policy and
// the devices the package fits.
func trustFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagSHA256, Usage: "package sha256, 64 lowercase hex `DIGITS`; devices of PROTOCOL.md 1.1 check it"},
		&cli.StringFlag{Name: flagSig, Usage: "the publisher's Ed25519 `SIGNATURE` of the package, base64, from `starter package sign`\n" +
			"\t(needs --sha256 and --key-id); the worker and the devices verify it with their trusted keys"},
		&cli.StringFlag{Name: flagKeyID, Usage: "`ID` of the key that made --sig"},
		&cli.StringFlag{Name: flagSidecar, Usage: "JSON `FILE` from `starter package sign --sidecar`: the package's type, version, size, md5,\n" +
			"\tsha256, sig and key_id in one (--type, --version, --md5 and --size may then be left out)"},
		trustedKeysFlag(),
		&cli.BoolFlag{Name: flagRequireSignatures, EnvVars: []string{pkgsig.EnvRequireSignatures},
			Usage: "refuse an unsigned package (exit 2)"},
		&cli.StringSliceFlag{Name: flagCompatibleLabel,
			Usage: "the package fits only devices with this label `KEY=VALUE` (e.g. model=pump-v2), repeatable"},
		&cli.StringFlag{Name: flagCompatibleVersions,
			Usage: "... and only devices whose current version of TYPE is in this `RANGE`, e.g. \">=1.0,<2.0\""},
	}
}

// soakFlag is --soak, one of the per-device flags.
func soakFlag() cli.Flag {
	return &cli.DurationFlag{Name: flagSoak,
		Usage: "after the device reports the new version, keep watching it this `DURATION`: another version\n" +
			"\treported meanwhile makes the upgrade reverted, a failure (0: no soak)"}
}

// readPackageTrust reads the integrity flags, or the sidecar, into req; every error is a
// usage error.
func readPackageTrust(cCtx *cli.Context, req *ota.UpgradeRequest) error {
	req.SHA256, req.Sig, req.KeyID = cCtx.String(flagSHA256), cCtx.String(flagSig), cCtx.String(flagKeyID)
	if cCtx.IsSet(flagSidecar) {
		if err := applySidecar(cCtx, req); err != nil {
			return err
		}
	}
	if req.SHA256 != "" && protocol.ValidateSHA256(req.SHA256) != nil {
		return usageErrorf(cCtx, "--%s must be 64 lowercase hex digits, not %q", flagSHA256, req.SHA256)
	}
	if req.Sig != "" {
		if _, err := protocol.DecodeSignature(req.Sig); err != nil {
			return usageErrorf(cCtx, "--%s: %s", flagSig, protocol.Reason(err))
		}
	}
	if req.KeyID != "" {
		if err := protocol.ValidateKeyID(req.KeyID); err != nil {
			return usageErrorf(cCtx, "--%s: %s", flagKeyID, protocol.Reason(err))
		}
	}
	switch {
	case req.Sig != "" && (req.KeyID == "" || req.SHA256 == ""):
		return usageErrorf(cCtx, "--%s needs --%s and --%s: the signature covers the sha256, and names its key", flagSig, flagKeyID, flagSHA256)
	case req.KeyID != "" && req.Sig == "":
		return usageErrorf(cCtx, "--%s without --%s: no signature to verify", flagKeyID, flagSig)
	}
	return nil
}

// applySidecar takes the package's fields and signature from --sidecar; the package flags
// given too must agree with it, since the signature covers the sidecar's.
func applySidecar(cCtx *cli.Context, req *ota.UpgradeRequest) error {
	for _, f := range []string{flagSHA256, flagSig, flagKeyID} {
		if cCtx.IsSet(f) {
			return usageErrorf(cCtx, "--%s gives the sha256, sig and key_id: leave out --%s", flagSidecar, f)
		}
	}
	sc, err := pkgsig.ReadSidecar(cCtx.String(flagSidecar))
	if err != nil {
		return usageErrorf(cCtx, "--%s: %v", flagSidecar, err)
	}
	for _, f := range []struct {
		flag, given, sidecar string
		set                  func()
	}{
		{"type", req.Type, sc.Type, func() { req.Type = sc.Type }},
		{"version", req.Version, sc.Version, func() { req.Version = sc.Version }},
		{"md5", req.MD5, sc.MD5, func() { req.MD5 = sc.MD5 }},
		{"size", strconv.FormatInt(req.Size, 10), strconv.FormatInt(sc.Size, 10), func() { req.Size = sc.Size }},
	} {
		if cCtx.IsSet(f.flag) && f.given != f.sidecar {
			return usageErrorf(cCtx, "--%s %s differs from the sidecar's %s; the signature covers the sidecar's", f.flag, f.given, f.sidecar)
		}
		f.set()
	}
	req.SHA256, req.Sig, req.KeyID = sc.SHA256, sc.Sig, sc.KeyID
	return nil
}

// checkSignaturePolicy applies the starter's signature policy before anything starts: with
// --require-signatures an unsigned package is refused; with --trusted-keys a signature must
// verify. Without trusted keys the worker verifies the signature (with its own keys, which
// are the authority), and the devices do. Every error is a usage error (exit 2).
func checkSignaturePolicy(cCtx *cli.Context, req ota.UpgradeRequest) error {
	if req.Sig == "" {
		if cCtx.Bool(flagRequireSignatures) {
			return usageErrorf(cCtx, "the package is not signed, and --%s (%s) requires a signature: give --%s, --%s and --%s "+
				"from `starter package sign`, or its --%s FILE", flagRequireSignatures, pkgsig.EnvRequireSignatures,
				flagSig, flagKeyID, flagSHA256, flagSidecar)
		}
		return nil
	}
	keys, err := loadTrustedKeys(cCtx)
	if err != nil || keys == nil {
		return err
	}
	p := pkgsig.Package{Type: req.Type, Version: req.Version, Size: req.Size, SHA256: req.SHA256}
	if err := keys.Verify(p, req.Sig, req.KeyID); err != nil {
		return usageErrorf(cCtx, "the package's signature fails against the trusted keys in %s: %v", cCtx.String(flagTrustedKeys), err)
	}
	return nil
}

// readCompat reads the compatibility flags; nil when none is given. Its errors are usage
// errors.
func readCompat(cCtx *cli.Context) (*ota.Compatibility, error) {
	labels := cCtx.StringSlice(flagCompatibleLabel)
	if len(labels) == 0 && !cCtx.IsSet(flagCompatibleVersions) {
		return nil, nil
	}
	c := &ota.Compatibility{Versions: strings.TrimSpace(cCtx.String(flagCompatibleVersions))}
	if cCtx.IsSet(flagCompatibleVersions) && c.Versions == "" {
		return nil, usageErrorf(cCtx, "--%s must not be empty", flagCompatibleVersions)
	}
	if len(labels) > 0 {
		m, err := parseKeyValues(labels, "compatible label")
		if err != nil {
			return nil, usageErrorf(cCtx, "--%s: %v", flagCompatibleLabel, err)
		}
		c.Labels = m
	}
	if err := c.Validate(); err != nil {
		return nil, usageErrorf(cCtx, "%v", err)
	}
	return c, nil
}
