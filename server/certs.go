package server

import (
	"crypto/tls"
	"sync/atomic"
)

// CertFiles is a TLS certificate read from a PEM certificate file and key
// file, reloadable while serving: certificates are renewed every few weeks,
// and a reload must not drop the connections already open. Handshakes
// after a Reload present the new certificate; open connections keep theirs.
type CertFiles struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// LoadCertFiles reads the pair once; an error here is a start-up error.
func LoadCertFiles(certFile, keyFile string) (*CertFiles, error) {
	c := &CertFiles{certFile: certFile, keyFile: keyFile}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// Reload reads the files again. On error the previous certificate stays in
// use, so a half-written renewal never takes the server down.
func (c *CertFiles) Reload() error {
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return err
	}
	c.cur.Store(&cert)
	return nil
}

// TLSConfig serves whatever certificate was loaded last.
func (c *CertFiles) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.cur.Load(), nil
		},
	}
}
