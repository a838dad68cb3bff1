package stream

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestTokenFileReadsEveryTime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	tf := TokenFile{Path: path}
	if _, err := tf.GetRequestMetadata(context.Background()); err == nil {
		t.Error("missing file: no error")
	}
	for _, tok := range []string{"first", "rotated"} {
		if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		md, err := tf.GetRequestMetadata(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if got := md["authorization"]; got != "Bearer "+tok {
			t.Errorf("authorization %q, want Bearer %s", got, tok)
		}
	}
	if err := os.WriteFile(path, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := tf.GetRequestMetadata(context.Background()); err == nil {
		t.Error("empty token: no error")
	}
	if !tf.RequireTransportSecurity() || (TokenFile{Insecure: true}).RequireTransportSecurity() {
		t.Error("RequireTransportSecurity: want true unless Insecure")
	}
}
