package netpath

import (
	"os"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
)

// The system trust store of a Go program on Linux, containerd's among
// them: the first of CertFiles that exists, and the files in CertDirs
// (crypto/x509's root_linux.go lists, in its order).
var (
	CertFiles = []string{
		"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Gentoo, Flatcar
		"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL 6
		"/etc/ssl/ca-bundle.pem",                            // OpenSUSE
		"/etc/pki/tls/cacert.pem",                           // OpenELEC
		"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7+, Amazon Linux
		"/etc/ssl/cert.pem",                                 // Alpine
	}
	CertDirs = []string{"/etc/ssl/certs", "/etc/pki/tls/certs"}
)

// NodeTrust returns the node's trust store under root, as the agent reads
// it: the first of CertFiles found (ok false when none is) and CertDirs.
// Pointing Go at them (SSL_CERT_FILE, SSL_CERT_DIR) makes registry TLS
// trust what the runtime on the node trusts, a CA the node's
// administrators installed included, instead of the agent image's CAs.
func NodeTrust(root hostfs.Root) (file string, dirs []string, ok bool) {
	for _, d := range CertDirs {
		dirs = append(dirs, root.Path(d))
	}
	for _, f := range CertFiles {
		p := root.Path(f)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Size() > 0 {
			return p, dirs, true
		}
	}
	return "", dirs, false
}
