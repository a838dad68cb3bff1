// Package tlsfiles is TLS material read from mounted files — a Kubernetes
// Secret volume in cert-manager's shape (tls.crt, tls.key, ca.crt) or a
// ConfigMap with a ca.crt — and read again when the files change, so that
// a renewed certificate is served (or a rotated CA trusted) without a
// restart.
//
// Why not k8s.io/apiserver's dynamiccertificates: it needs its controller
// plumbing (queues, listeners, Run loops) for what is here a stat of two
// small files on a handshake, at most once a second.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// The file names of a kubernetes.io/tls Secret, as cert-manager writes it.
const (
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
	CAFile   = "ca.crt"
)

// recheck is how often, at most, the files are looked at again.
const recheck = time.Second

// stamp is what says a file changed: a Secret volume update swaps a
// symlink, so the file behind the name has a new mtime (and usually size).
type stamp struct {
	mod  time.Time
	size int64
}

func stat(path string) (stamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}, err
	}
	return stamp{fi.ModTime(), fi.Size()}, nil
}

// Keypair serves the certificate and key of a directory (tls.crt and
// tls.key), loaded again when either file changes.
type Keypair struct {
	certFile, keyFile string
	now               func() time.Time

	mu        sync.Mutex
	cert      *tls.Certificate
	stamps    [2]stamp
	checked   time.Time
	lastError error
}

// LoadKeypair loads dir's tls.crt and tls.key; the error names the files
// when they are missing or do not match.
func LoadKeypair(dir string) (*Keypair, error) {
	k := &Keypair{certFile: filepath.Join(dir, CertFile), keyFile: filepath.Join(dir, KeyFile), now: time.Now}
	if err := k.reload(true); err != nil {
		return nil, err
	}
	return k, nil
}

// reload reads the files again when they changed (or when force is set).
// On a failure the previous certificate stays in use.
func (k *Keypair) reload(force bool) error {
	cs, err := stat(k.certFile)
	if err != nil {
		return fmt.Errorf("TLS certificate %s: %w", k.certFile, err)
	}
	ks, err := stat(k.keyFile)
	if err != nil {
		return fmt.Errorf("TLS key %s: %w", k.keyFile, err)
	}
	if !force && k.cert != nil && cs == k.stamps[0] && ks == k.stamps[1] {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		// Possibly caught between the writes of the two files: keep the
		// old pair and try again on a later handshake.
		return fmt.Errorf("TLS key pair %s, %s: %w", k.certFile, k.keyFile, err)
	}
	k.cert, k.stamps = &cert, [2]stamp{cs, ks}
	return nil
}

// Certificate returns the current certificate, reloading the files first
// when they changed (looked at most once a second).
func (k *Keypair) Certificate() (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if now := k.now(); now.Sub(k.checked) >= recheck {
		k.checked = now
		k.lastError = k.reload(false)
	}
	if k.cert == nil {
		return nil, k.lastError
	}
	return k.cert, nil
}

// LastError is the error of the latest failed reload (nil after a good one).
func (k *Keypair) LastError() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lastError
}

// ServerConfig is a TLS 1.2+ server configuration serving k's current
// certificate.
func (k *Keypair) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return k.Certificate()
		},
	}
}

// CAPool is a PEM bundle of CA certificates in a file, read again when it
// changes.
type CAPool struct {
	file string
	now  func() time.Time

	mu      sync.Mutex
	pool    *x509.CertPool
	stamp   stamp
	checked time.Time
}

// LoadCAPool reads file, which must hold at least one PEM certificate.
func LoadCAPool(file string) (*CAPool, error) {
	c := &CAPool{file: file, now: time.Now}
	if err := c.reload(true); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *CAPool) reload(force bool) error {
	st, err := stat(c.file)
	if err != nil {
		return fmt.Errorf("CA file %s: %w", c.file, err)
	}
	if !force && c.pool != nil && st == c.stamp {
		return nil
	}
	pem, err := os.ReadFile(c.file)
	if err != nil {
		return fmt.Errorf("CA file %s: %w", c.file, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("CA file %s: %w", c.file, errNoCertificate)
	}
	c.pool, c.stamp = pool, st
	return nil
}

var errNoCertificate = errors.New("no PEM certificate in it")

// Pool returns the current pool, reading the file again first when it
// changed (looked at most once a second). A file that went bad leaves the
// previous pool in use.
func (c *CAPool) Pool() *x509.CertPool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.now(); now.Sub(c.checked) >= recheck {
		c.checked = now
		_ = c.reload(false) // the previous pool stays; LoadCAPool reported the first failure
	}
	return c.pool
}
