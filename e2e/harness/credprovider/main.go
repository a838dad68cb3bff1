// Command credprovider is a kubelet credential provider exec plugin for the
// end-to-end tests (credentialprovider.kubelet.k8s.io/v1): it reads a
// CredentialProviderRequest on stdin and answers a CredentialProviderResponse
// on stdout with one credential, for the request's registry host.
//
// Its settings come from the environment, which the kubelet (and the
// agent) build from the provider's env list in the CredentialProviderConfig:
//
//	CREDPROVIDER_USERNAME, CREDPROVIDER_PASSWORD  the credential
//	CREDPROVIDER_FILE       a JSON file {"username": ..., "password": ...}
//	                        read instead, at every run (so a test can change it)
//	CREDPROVIDER_PATTERN    the auth key answered (default: the image's host)
//	CREDPROVIDER_CACHE_KEY  cacheKeyType (default Registry)
//	CREDPROVIDER_DURATION   cacheDuration (default: unset)
//	CREDPROVIDER_LOG        a file each request's image is appended to
//	CREDPROVIDER_FAIL       when set, print it on stderr and exit 1
//	CREDPROVIDER_REQUIRE_TOKEN  when set, fail unless the request carries a
//	                        service account token (KEP-4412: a provider whose
//	                        config has tokenAttributes); the log line then
//	                        ends in " token"
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

const apiVersion = "credentialprovider.kubelet.k8s.io/v1"

type request struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Image      string `json:"image"`
	// ServiceAccountToken is the pod's service account token, sent when
	// the provider's config has tokenAttributes (KEP-4412).
	ServiceAccountToken string `json:"serviceAccountToken,omitempty"`
}

type authConfig struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

type response struct {
	APIVersion    string                `json:"apiVersion"`
	Kind          string                `json:"kind"`
	CacheKeyType  string                `json:"cacheKeyType"`
	CacheDuration string                `json:"cacheDuration,omitempty"`
	Auth          map[string]authConfig `json:"auth"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "credprovider:", err)
		os.Exit(1)
	}
}

func run() error {
	in, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	if err != nil {
		return err
	}
	var req request
	if err := json.Unmarshal(in, &req); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	if req.APIVersion != apiVersion || req.Kind != "CredentialProviderRequest" || req.Image == "" {
		return fmt.Errorf("unexpected request %s/%s for %q", req.APIVersion, req.Kind, req.Image)
	}
	if p := os.Getenv("CREDPROVIDER_LOG"); p != "" {
		f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		line := req.Image
		if req.ServiceAccountToken != "" {
			line += " token"
		}
		_, err = fmt.Fprintln(f, line)
		f.Close()
		if err != nil {
			return err
		}
	}
	if os.Getenv("CREDPROVIDER_REQUIRE_TOKEN") != "" && req.ServiceAccountToken == "" {
		return fmt.Errorf("no service account token in the request for %q (this provider needs one: tokenAttributes)", req.Image)
	}
	if msg := os.Getenv("CREDPROVIDER_FAIL"); msg != "" {
		return fmt.Errorf("told to fail: %s", msg)
	}
	cred := authConfig{Username: os.Getenv("CREDPROVIDER_USERNAME"), Password: os.Getenv("CREDPROVIDER_PASSWORD")}
	if p := os.Getenv("CREDPROVIDER_FILE"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &cred); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	pattern := os.Getenv("CREDPROVIDER_PATTERN")
	if pattern == "" {
		pattern, _, _ = strings.Cut(req.Image, "/")
	}
	keyType := os.Getenv("CREDPROVIDER_CACHE_KEY")
	if keyType == "" {
		keyType = "Registry"
	}
	return json.NewEncoder(os.Stdout).Encode(response{
		APIVersion:    apiVersion,
		Kind:          "CredentialProviderResponse",
		CacheKeyType:  keyType,
		CacheDuration: os.Getenv("CREDPROVIDER_DURATION"),
		Auth:          map[string]authConfig{pattern: cred},
	})
}
