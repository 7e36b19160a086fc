package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
)

// flagTrustedKeys names the directory of trusted public keys; envTrustedKeys sets it too, for
// the starter, the worker, devstack and devicesim alike.
const (
	flagTrustedKeys = "trusted-keys"
	envTrustedKeys  = pkgsig.EnvTrustedKeys
)

// trustedKeysFlag is --trusted-keys, for every command that verifies signatures.
func trustedKeysFlag() cli.Flag {
	return &cli.StringFlag{Name: flagTrustedKeys, EnvVars: []string{envTrustedKeys},
		Usage: "`DIR` of trusted public keys: one <key_id>.pub file (PEM, as openssl pkey -pubout writes) per key"}
}

// loadTrustedKeys reads --trusted-keys; nil when it is not set. Its errors are usage errors.
func loadTrustedKeys(cCtx *cli.Context) (*pkgsig.TrustedKeys, error) {
	dir := cCtx.String(flagTrustedKeys)
	if dir == "" {
		return nil, nil
	}
	keys, err := pkgsig.LoadTrustedKeys(dir)
	if err != nil {
		return nil, usageErrorf(cCtx, "--%s: %v", flagTrustedKeys, err)
	}
	return keys, nil
}

func keygenCommand(e *appEnv) *cli.Command {
	return &cli.Command{
		Name:      "keygen",
		Usage:     "make an Ed25519 key pair to sign packages with",
		UsageText: "starter package keygen --out DIR --key-id ID",
		Description: "Writes DIR/ID.key (the private key, PEM PKCS#8, mode 0600) and DIR/ID.pub (the public key,\n" +
			"PEM SubjectPublicKeyInfo), never overwriting a key. The private key stays with whoever\n" +
			"publishes packages; OTAflow and the devices need only ID.pub, in their trusted keys\n" +
			"directory (--trusted-keys, " + envTrustedKeys + "). Keys made with openssl work too:\n" +
			"  openssl genpkey -algorithm ed25519 -out ID.key && openssl pkey -in ID.key -pubout -out ID.pub",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "`DIR` to write the key pair to, created if missing (required)"},
			&cli.StringFlag{Name: "key-id", Usage: "key `ID`, 1 to 64 of A-Z a-z 0-9 _ . - (required); commands name the key by it"},
		},
		Before: requireFlags("out", "key-id"),
		Action: e.keygenAction,
	}
}

func (e *appEnv) keygenAction(cCtx *cli.Context) error {
	keyID := cCtx.String("key-id")
	if err := protocol.ValidateKeyID(keyID); err != nil {
		return usageErrorf(cCtx, "--key-id: %s", protocol.Reason(err))
	}
	files, err := pkgsig.WriteKeyPair(cCtx.String("out"), keyID)
	if errors.Is(err, fs.ErrExist) {
		return usageErrorf(cCtx, "%v", err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "private key  %s  (keep it secret, with the package publisher)\n", files.Private)
	fmt.Fprintf(e.out, "public key   %s  (copy it into the trusted keys directory of OTAflow and the devices)\n\n", files.Public)
	fmt.Fprintf(e.out, "starter package sign --key %s --key-id %s --type TYPE --version VERSION --file PACKAGE\n",
		shellQuote(files.Private), keyID)
	return nil
}

func signCommand(e *appEnv) *cli.Command {
	return &cli.Command{
		Name:      "sign",
		Usage:     "sign a package with a private key: print its sha256 and the signature, or write a sidecar",
		UsageText: "starter package sign --key FILE [--key-id ID] --type T --version V (--file F | --url U) [--sidecar FILE] [--json]",
		Description: "Reads the package once (a download is hashed as it streams, never stored) and signs\n" +
			"PROTOCOL.md's five lines: otaflow-package-v1, type, version, size and sha256. Prints them\n" +
			"with the md5 and the base64 signature; --sidecar FILE also writes them as JSON. With\n" +
			"--trusted-keys (or " + envTrustedKeys + ") set, the signature must verify against those keys.",
		Flags: slices.Concat([]cli.Flag{
			&cli.StringFlag{Name: "key", Usage: "private key `FILE` (PEM PKCS#8 Ed25519, from `package keygen` or openssl) (required)"},
			&cli.StringFlag{Name: "key-id", Usage: "`ID` of the key, as the trusted keys name it (default: the key file's name without .key)"},
			&cli.StringFlag{Name: "type", Usage: "upgrade `TYPE` the package is for (required)"},
			&cli.StringFlag{Name: "version", Usage: "`VERSION` the package installs (required)"},
		}, sourceFlags(), []cli.Flag{
			&cli.StringFlag{Name: "sidecar", Usage: "also write the package's fields and signature to this JSON `FILE`"},
			trustedKeysFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object"},
		}),
		Before: requireFlags("key", "type", "version"),
		Action: e.signAction,
	}
}

// signed is what `package sign` prints with --json: the sidecar's fields and where the
// package was read.
type signed struct {
	pkgsig.Sidecar
	URL     string `json:"url,omitempty"`
	Path    string `json:"path,omitempty"`
	Written string `json:"sidecar,omitempty"`
}

func (e *appEnv) signAction(cCtx *cli.Context) error {
	typ, version, err := typeAndVersion(cCtx)
	if err != nil {
		return err
	}
	keyFile := cCtx.String("key")
	keyID := cCtx.String("key-id")
	if !cCtx.IsSet("key-id") {
		keyID = strings.TrimSuffix(filepath.Base(keyFile), pkgsig.PrivateKeyExt)
	}
	if err := protocol.ValidateKeyID(keyID); err != nil {
		hint := ""
		if !cCtx.IsSet("key-id") {
			hint = " (from the key file's name; give --key-id)"
		}
		return usageErrorf(cCtx, "--key-id: %s%s", protocol.Reason(err), hint)
	}
	src, err := packageSource(cCtx)
	if err != nil {
		return err
	}
	trusted, err := loadTrustedKeys(cCtx)
	if err != nil {
		return err
	}
	key, err := readSigningKey(cCtx, keyFile)
	if err != nil {
		return err
	}
	// Refuse to sign with a key the configured trusted keys would not accept, before the
	// download.
	if trusted != nil {
		pub, ok := trusted.Key(keyID)
		switch {
		case !ok:
			return usageErrorf(cCtx, "key %q is not among the trusted keys in %s (%s): OTAflow would refuse its signatures",
				keyID, cCtx.String(flagTrustedKeys), strings.Join(trusted.IDs(), ", "))
		case !pub.Equal(key.Public()):
			return usageErrorf(cCtx, "the trusted key %q in %s is not the public key of %s", keyID, cCtx.String(flagTrustedKeys), keyFile)
		}
	}

	info, err := inspectPackage(cCtx.Context, src)
	if err != nil {
		return err
	}
	p := pkgsig.Package{Type: typ, Version: version, Size: info.Size, SHA256: info.SHA256}
	sig, err := pkgsig.Sign(key, p)
	if err != nil {
		return err
	}
	out := signed{
		Sidecar: pkgsig.Sidecar{Type: typ, Version: version, Size: info.Size, MD5: info.MD5, SHA256: info.SHA256, Sig: sig, KeyID: keyID},
		URL:     info.URL, Path: info.Path,
	}
	if path := cCtx.String("sidecar"); path != "" {
		if err := pkgsig.WriteSidecar(path, out.Sidecar); err != nil {
			return err
		}
		out.Written = path
	}
	if cCtx.Bool("json") {
		return writeJSON(e.out, out)
	}
	printPackage(e, out.Sidecar, info)
	fmt.Fprintf(e.out, "key_id   %s\nsig      %s\n", keyID, sig)
	if out.Written != "" {
		fmt.Fprintf(e.out, "sidecar  %s\n", out.Written)
	}
	fmt.Fprintf(e.out, "\n--md5 %s --size %d --sha256 %s --sig %s --key-id %s\n", info.MD5, info.Size, info.SHA256, sig, keyID)
	return nil
}

// printPackage prints where a package was read and its fields.
func printPackage(e *appEnv, s pkgsig.Sidecar, info packageInfo) {
	if info.URL != "" {
		fmt.Fprintf(e.out, "url      %s\n", info.URL)
	} else {
		fmt.Fprintf(e.out, "file     %s\n", info.Path)
	}
	fmt.Fprintf(e.out, "type     %s\nversion  %s\nsize     %d\nmd5      %s\nsha256   %s\n", s.Type, s.Version, s.Size, s.MD5, s.SHA256)
}

// typeAndVersion reads and checks --type and --version.
func typeAndVersion(cCtx *cli.Context) (string, string, error) {
	typ, version := cCtx.String("type"), cCtx.String("version")
	if err := protocol.ValidateType(typ); err != nil {
		return "", "", usageErrorf(cCtx, "--type: %s", protocol.Reason(err))
	}
	if err := protocol.ValidateVersion(version); err != nil {
		return "", "", usageErrorf(cCtx, "--version: %s", protocol.Reason(err))
	}
	return typ, version, nil
}

// sourceFlags give the package to `package sign` and `package verify`; packageSource reads
// them.
func sourceFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "file", Usage: "package `FILE` to read"},
		&cli.StringFlag{Name: "url", Usage: "http(s) `URL` (or file path, file:// URL) to download the package from"},
	}
}

// packageSource reads --file or --url, exactly one of which is given.
func packageSource(cCtx *cli.Context) (source, error) {
	file, rawURL := cCtx.String("file"), cCtx.String("url")
	switch {
	case cCtx.IsSet("file") && cCtx.IsSet("url"):
		return source{}, usageErrorf(cCtx, "give --file or --url, not both")
	case cCtx.IsSet("file"):
		if file == "" {
			return source{}, usageErrorf(cCtx, "--file is empty")
		}
		abs, err := filepath.Abs(file)
		if err != nil {
			return source{}, usageErrorf(cCtx, "--file: %v", err)
		}
		return source{path: abs}, nil
	case cCtx.IsSet("url"):
		src, err := parseSource(rawURL)
		if err != nil {
			return source{}, usageErrorf(cCtx, "--url: %v", err)
		}
		return src, nil
	default:
		return source{}, usageErrorf(cCtx, "give the package with --file or --url")
	}
}

// readSigningKey reads the private key: a file that cannot be read is a failure, one that
// holds no Ed25519 private key bad input.
func readSigningKey(cCtx *cli.Context, path string) (ed25519.PrivateKey, error) {
	key, err := pkgsig.ReadPrivateKey(path)
	var pathErr *fs.PathError
	switch {
	case errors.As(err, &pathErr):
		return nil, fmt.Errorf("--key: %w", err)
	case err != nil:
		return nil, usageErrorf(cCtx, "--key: %v", err)
	}
	return key, nil
}

func verifyCommand(e *appEnv) *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "check a package and its signature against the trusted keys, as OTAflow and the devices do",
		UsageText: "starter package verify (--file F | --url U) --sidecar FILE [--trusted-keys DIR]\n" +
			"   starter package verify (--file F | --url U) --type T --version V --sig SIG --key-id ID [--sha256 H] [--md5 M] [--size S] [--trusted-keys DIR]",
		Description: "Reads the package once and checks, in order: its size, sha256 and md5 against those given\n" +
			"(or the sidecar's), then the signature over its type, version, size and sha256 under the\n" +
			"trusted key named by --key-id. Exit codes: 0 verified, 1 a check failed (the message\n" +
			"names it: size, md5 or sha256 mismatch, unknown key_id, bad signature), 2 bad input.",
		Flags: append(sourceFlags(),
			&cli.StringFlag{Name: "sidecar", Usage: "JSON `FILE` written by `package sign --sidecar`, instead of the flags below"},
			&cli.StringFlag{Name: "type", Usage: "upgrade `TYPE` the package was signed for"},
			&cli.StringFlag{Name: "version", Usage: "`VERSION` the package was signed for"},
			&cli.StringFlag{Name: "sig", Usage: "the `SIGNATURE`, base64"},
			&cli.StringFlag{Name: "key-id", Usage: "`ID` of the key that made it"},
			&cli.StringFlag{Name: "sha256", Usage: "the package's announced sha256 (64 lowercase hex `DIGITS`)"},
			&cli.StringFlag{Name: "md5", Usage: "the package's announced md5 (32 lowercase hex `DIGITS`)"},
			&cli.Int64Flag{Name: "size", Usage: "the package's announced size in `BYTES`"},
			trustedKeysFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object"},
		),
		Before: requireFlags(),
		Action: e.verifyAction,
	}
}

// verified is what `package verify` prints with --json.
type verified struct {
	pkgsig.Sidecar
	URL  string `json:"url,omitempty"`
	Path string `json:"path,omitempty"`
}

func (e *appEnv) verifyAction(cCtx *cli.Context) error {
	claim, err := verifyClaim(cCtx)
	if err != nil {
		return err
	}
	src, err := packageSource(cCtx)
	if err != nil {
		return err
	}
	trusted, err := loadTrustedKeys(cCtx)
	if err != nil {
		return err
	}
	if trusted == nil {
		return usageErrorf(cCtx, "give the trusted keys: --%s DIR or %s", flagTrustedKeys, envTrustedKeys)
	}
	info, err := inspectPackage(cCtx.Context, src)
	if err != nil {
		return err
	}
	if claim.Size != 0 && claim.Size != info.Size {
		return fmt.Errorf("size mismatch: the package is %d bytes, not the %d announced", info.Size, claim.Size)
	}
	if claim.SHA256 != "" {
		if err := pkgsig.CheckSHA256(claim.SHA256, info.SHA256); err != nil {
			return err
		}
	}
	if claim.MD5 != "" && claim.MD5 != info.MD5 {
		return fmt.Errorf("md5 mismatch: the package's md5 is %s, not the %s announced", info.MD5, claim.MD5)
	}
	claim.Size, claim.MD5, claim.SHA256 = info.Size, info.MD5, info.SHA256
	if err := trusted.Verify(claim.Package(), claim.Sig, claim.KeyID); err != nil {
		return err
	}
	if cCtx.Bool("json") {
		return writeJSON(e.out, verified{Sidecar: claim, URL: info.URL, Path: info.Path})
	}
	fmt.Fprintf(e.out, "verified: signed by %s\n", claim.KeyID)
	printPackage(e, claim, info)
	return nil
}

// verifyClaim reads what `package verify` checks the package against: the sidecar, or the
// flags. Every error is a usage error.
func verifyClaim(cCtx *cli.Context) (pkgsig.Sidecar, error) {
	claimFlags := []string{"type", "version", "sig", "key-id", "sha256", "md5", "size"}
	if path := cCtx.String("sidecar"); path != "" {
		for _, name := range claimFlags {
			if cCtx.IsSet(name) {
				return pkgsig.Sidecar{}, usageErrorf(cCtx, "--%s: the sidecar gives the package's fields; give either --sidecar or the flags", name)
			}
		}
		s, err := pkgsig.ReadSidecar(path)
		if err != nil {
			return pkgsig.Sidecar{}, usageErrorf(cCtx, "--sidecar: %v", err)
		}
		return s, nil
	}
	var missing []string
	for _, name := range claimFlags[:4] {
		if !cCtx.IsSet(name) {
			missing = append(missing, "--"+name)
		}
	}
	if len(missing) > 0 {
		return pkgsig.Sidecar{}, usageErrorf(cCtx, "missing required flag(s) %s (or give --sidecar)", strings.Join(missing, ", "))
	}
	typ, version, err := typeAndVersion(cCtx)
	if err != nil {
		return pkgsig.Sidecar{}, err
	}
	s := pkgsig.Sidecar{Type: typ, Version: version, Sig: cCtx.String("sig"), KeyID: cCtx.String("key-id"),
		SHA256: cCtx.String("sha256"), MD5: cCtx.String("md5"), Size: cCtx.Int64("size")}
	if _, err := protocol.DecodeSignature(s.Sig); err != nil {
		return s, usageErrorf(cCtx, "--sig: %s", protocol.Reason(err))
	}
	if err := protocol.ValidateKeyID(s.KeyID); err != nil {
		return s, usageErrorf(cCtx, "--key-id: %s", protocol.Reason(err))
	}
	if cCtx.IsSet("sha256") {
		if err := protocol.ValidateSHA256(s.SHA256); err != nil {
			return s, usageErrorf(cCtx, "--sha256: %s", protocol.Reason(err))
		}
	}
	if cCtx.IsSet("md5") {
		if err := protocol.ValidateMD5(s.MD5); err != nil {
			return s, usageErrorf(cCtx, "--md5: %s", protocol.Reason(err))
		}
	}
	if cCtx.IsSet("size") && s.Size <= 0 {
		return s, usageErrorf(cCtx, "--size must be more than 0 bytes, not %d", s.Size)
	}
	return s, nil
}
