// Package tlstest gives tests a throwaway certificate authority, with a server certificate for
// 127.0.0.1 and localhost and a client certificate, written as PEM files, and a TLS-terminating
// proxy to put in front of a plain TCP server (the embedded MQTT broker, the Temporal dev
// server), so that TLS is tested against real servers.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// PKI is a certificate authority and the certificates it signed, as PEM files in a temporary
// directory.
type PKI struct {
	// CAFile holds the CA certificate.
	CAFile string
	// ServerCertFile and ServerKeyFile are a server certificate for 127.0.0.1, ::1 and
	// localhost, and its key.
	ServerCertFile, ServerKeyFile string
	// ClientCertFile and ClientKeyFile are a client certificate (CN otaflow-test-client) and its
	// key.
	ClientCertFile, ClientKeyFile string

	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
	dir   string
}

// NewPKI makes a new CA named name, and its server and client certificates, in tb.TempDir().
// Two PKIs never trust each other's certificates.
func NewPKI(tb testing.TB, name string) *PKI {
	tb.Helper()
	dir := tb.TempDir()
	caKey := newKey(tb)
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: name + " test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatalf("tlstest: create CA: %v", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("tlstest: parse CA: %v", err)
	}
	p := &PKI{ca: ca, caKey: caKey, dir: dir, CAFile: filepath.Join(dir, "ca.pem")}
	writePEM(tb, p.CAFile, "CERTIFICATE", der)
	p.ServerCertFile, p.ServerKeyFile = p.Issue(tb, "server", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	p.ClientCertFile, p.ClientKeyFile = p.Issue(tb, "client", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "otaflow-test-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return p
}

// Issue signs a leaf certificate made from tmpl (its subject, names and usages; validity,
// serial number and key usage are filled in) with a new key, writes both as name.pem and
// name-key.pem and returns their paths.
func (p *PKI) Issue(tb testing.TB, name string, tmpl *x509.Certificate) (certFile, keyFile string) {
	tb.Helper()
	key := newKey(tb)
	t := *tmpl
	t.SerialNumber = serial(tb)
	t.NotBefore, t.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	t.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, &t, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		tb.Fatalf("tlstest: create certificate %s: %v", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatalf("tlstest: marshal key %s: %v", name, err)
	}
	certFile, keyFile = filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+"-key.pem")
	writePEM(tb, certFile, "CERTIFICATE", der)
	writePEM(tb, keyFile, "PRIVATE KEY", keyDER)
	return certFile, keyFile
}

// Pool is a pool holding the CA certificate alone.
func (p *PKI) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	return pool
}

// ServerConfig is the configuration of a server presenting the server certificate and
// requiring a client certificate signed by this CA. It offers h2 by ALPN, as gRPC needs.
func (p *PKI) ServerConfig(tb testing.TB) *tls.Config {
	tb.Helper()
	cert, err := tls.LoadX509KeyPair(p.ServerCertFile, p.ServerKeyFile)
	if err != nil {
		tb.Fatalf("tlstest: load server certificate: %v", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.Pool(),
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2"},
	}
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("tlstest: generate key: %v", err)
	}
	return key
}

func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		tb.Fatalf("tlstest: serial number: %v", err)
	}
	return n
}

func writePEM(tb testing.TB, path, blockType string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), 0o600); err != nil {
		tb.Fatalf("tlstest: %v", err)
	}
}

// Proxy listens on 127.0.0.1 with cfg (see PKI.ServerConfig), and forwards every connection
// whose handshake succeeds to the plain TCP server at backend. It returns the address to dial
// and stops, closing every connection, when the test ends.
func Proxy(tb testing.TB, backend string, cfg *tls.Config) string {
	tb.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		tb.Fatalf("tlstest: proxy: %v", err)
	}
	p := &proxy{backend: backend, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve(ln)
	tb.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		p.closed = true
		for c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return ln.Addr().String()
}

type proxy struct {
	backend string
	wg      sync.WaitGroup
	mu      sync.Mutex
	closed  bool
	conns   map[net.Conn]struct{}
}

// track remembers c for closing at the end; it reports false (and closes c) once closed.
func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	_ = c.Close()
}

func (p *proxy) serve(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go p.forward(c.(*tls.Conn))
	}
}

// forward completes the handshake (failing it as the server would), then copies both ways.
func (p *proxy) forward(c *tls.Conn) {
	defer p.wg.Done()
	defer p.untrack(c)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		// The alert is on its way to the client. Closing now, with the client's first
		// packet unread, would make the kernel reset the connection, and the reset may
		// overtake the alert: the client would see "connection reset" or "broken pipe"
		// instead of the reason. Half-close and drain first, as a TLS server would.
		raw := c.NetConn()
		if tcp, ok := raw.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
		_ = raw.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.Copy(io.Discard, raw)
		return
	}
	_ = c.SetDeadline(time.Time{})
	b, err := net.DialTimeout("tcp", p.backend, 10*time.Second)
	if err != nil {
		return
	}
	if !p.track(b) {
		return
	}
	defer p.untrack(b)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go cp(b, c)
	go cp(c, b)
	<-done
	// One side ended: end the other too.
	_ = c.Close()
	_ = b.Close()
	<-done
}
