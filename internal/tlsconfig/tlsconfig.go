// Package tlsconfig builds the client TLS configuration of OTAflow's connections (MQTT,
// Temporal) from PEM files: a CA bundle to trust, an optional client certificate and key for
// mutual TLS, and an optional server name. Certificates are always verified: there is no
// option to skip verification. PostgreSQL connections take the same files as DATABASE_URL
// parameters (sslmode=verify-full&sslrootcert=...&sslcert=...&sslkey=...) instead.
package tlsconfig

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Errors wrapped by Files.Config; test them with errors.Is.
var (
	// ErrNoCertificates: a CA or certificate file holds no PEM certificate.
	ErrNoCertificates = errors.New("no PEM certificates found")
	// ErrNoPrivateKey: a key file holds no usable PEM private key.
	ErrNoPrivateKey = errors.New("no PEM private key found")
	// ErrKeyMismatch: the client key is not the key of the client certificate.
	ErrKeyMismatch = errors.New("the private key does not match the certificate")
	// ErrIncomplete: a client certificate without its key, or a key without its certificate.
	ErrIncomplete = errors.New("a client certificate and its key go together: give both or neither")
)

// Files names the PEM files of one kind of TLS connection. The zero value asks for nothing:
// TLS, if the connection uses it, then trusts the system's roots and sends no certificate.
type Files struct {
	// CA is a bundle of PEM certificates that sign the server's certificate; "" trusts the
	// system's roots.
	CA string
	// Cert and Key are the client certificate (PEM, optionally followed by its intermediates)
	// and its PEM private key (PKCS #8, PKCS #1 or SEC 1), for servers that require mutual
	// TLS. Both or neither.
	Cert, Key string
	// ServerName, when set, is the name the server's certificate must carry, instead of the
	// host the client dials (for servers reached by IP address or through a tunnel).
	ServerName string
}

// IsZero reports whether f names no file and no server name.
func (f Files) IsZero() bool { return f == Files{} }

// Config reads the files and returns a client configuration: TLS 1.2 or later, the server's
// certificate verified against CA (or the system's roots) and ServerName (or the dialled
// host), and the client certificate when given. Its errors name the file and what is wrong
// with it; they never include a key's contents.
func (f Files) Config() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName}
	if f.CA != "" {
		pool, err := LoadCertPool(f.CA)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	switch {
	case f.Cert != "" && f.Key != "":
		cert, err := LoadKeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	case f.Cert != "":
		return nil, fmt.Errorf("client certificate %s has no key file: %w", f.Cert, ErrIncomplete)
	case f.Key != "":
		return nil, fmt.Errorf("client key %s has no certificate file: %w", f.Key, ErrIncomplete)
	}
	return cfg, nil
}

// LoadCertPool reads a bundle of PEM certificates into a new pool (without the system's roots).
func LoadCertPool(path string) (*x509.CertPool, error) {
	certs, err := readCertificates("CA file", path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// LoadKeyPair reads a PEM certificate (with its chain) and its PEM private key and checks that
// they belong together.
func LoadKeyPair(certPath, keyPath string) (tls.Certificate, error) {
	certs, err := readCertificates("client certificate", certPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := readPrivateKey(keyPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(certs[0].PublicKey) {
		return tls.Certificate{}, fmt.Errorf("client key %s and certificate %s: %w", keyPath, certPath, ErrKeyMismatch)
	}
	cert := tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, c := range certs {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

// readCertificates reads the PEM CERTIFICATE blocks of a file; what names the file in errors.
func readCertificates(what, path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: cannot read: %w", what, err)
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s %s: certificate %d is not valid: %w", what, path, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s %s: %w", what, path, ErrNoCertificates)
	}
	return certs, nil
}

// readPrivateKey reads the first PEM private key of a file. Its errors never quote the file.
func readPrivateKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("client key: cannot read: %w", err)
	}
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("client key %s: %w", path, ErrNoPrivateKey)
		}
		if !strings.HasSuffix(block.Type, "PRIVATE KEY") {
			continue
		}
		if _, encrypted := block.Headers["DEK-Info"]; encrypted || block.Type == "ENCRYPTED PRIVATE KEY" {
			return nil, fmt.Errorf("client key %s is encrypted, which is not supported: %w", path, ErrNoPrivateKey)
		}
		key, err := parsePrivateKey(block.Bytes)
		if err != nil {
			// The parse errors of crypto/x509 say what failed, never the key's bytes.
			return nil, fmt.Errorf("client key %s: %w: %w", path, ErrNoPrivateKey, err)
		}
		return key, nil
	}
}

// parsePrivateKey parses a DER private key the way crypto/tls does: PKCS #1, PKCS #8, SEC 1.
func parsePrivateKey(der []byte) (crypto.Signer, error) {
	if key, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return key, nil
	}
	if key, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		switch key := key.(type) {
		case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
			return key.(crypto.Signer), nil
		default:
			return nil, fmt.Errorf("unsupported key type %T", key)
		}
	}
	if key, err := x509.ParseECPrivateKey(der); err == nil {
		return key, nil
	}
	return nil, errors.New("not a PKCS #1, PKCS #8 or SEC 1 private key")
}
