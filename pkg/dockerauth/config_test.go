package dockerauth

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestParseDockerConfigJSON(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []Entry
		ignored []string
		wantErr string
	}{
		{name: "auth field", in: `{"auths":{"r.example":{"auth":"` + b64("alice:pa:ss") + `"}}}`,
			want: []Entry{{"r.example", Credential{Username: "alice", Password: "pa:ss"}}}},
		{name: "auth unpadded", in: `{"auths":{"r.example":{"auth":"` + strings.TrimRight(b64("bob:x"), "=") + `"}}}`,
			want: []Entry{{"r.example", Credential{Username: "bob", Password: "x"}}}},
		{name: "username password", in: `{"auths":{"r.example":{"username":"u","password":"p","email":"e@x"}}}`,
			want: []Entry{{"r.example", Credential{Username: "u", Password: "p"}}}},
		{name: "auth wins over username", in: `{"auths":{"r.example":{"username":"u","password":"p","auth":"` + b64("a:b") + `"}}}`,
			want: []Entry{{"r.example", Credential{Username: "a", Password: "b"}}}},
		{name: "case-insensitive keys as in Go and the kubelet", in: `{"Auths":{"r.example":{"Username":"u","Password":"p"}}}`,
			want: []Entry{{"r.example", Credential{Username: "u", Password: "p"}}}},
		{name: "sorted keys", in: `{"auths":{"b.example":{"auth":"` + b64("b:2") + `"},"a.example":{"auth":"` + b64("a:1") + `"}}}`,
			want: []Entry{{"a.example", Credential{Username: "a", Password: "1"}}, {"b.example", Credential{Username: "b", Password: "2"}}}},
		{name: "helpers ignored", in: `{"auths":{},"credsStore":"desktop","credHelpers":{"gcr.io":"gcloud"}}`,
			ignored: []string{"credHelpers", "credsStore"}},
		{name: "identity token only", in: `{"auths":{"r.example":{"identitytoken":"tok"}}}`,
			ignored: []string{`auths["r.example"] identitytoken/registrytoken`}},
		{name: "no auths is valid and empty", in: `{}`},
		{name: "null", in: `null`},
		{name: "syntax", in: `{"auths":{"r.example":{"auth":"x"`, wantErr: "syntax error at byte"},
		{name: "wrong type", in: `{"auths":[]}`, wantErr: "not a docker config"},
		{name: "auth not base64", in: `{"auths":{"r.example":{"auth":"!!!"}}}`, wantErr: `auths["r.example"].auth: not base64`},
		{name: "auth without colon", in: `{"auths":{"r.example":{"auth":"` + b64("nocolon") + `"}}}`, wantErr: "username:password"},
		{name: "too large", in: `{"auths":{}}` + strings.Repeat(" ", MaxConfigBytes), wantErr: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConfigJSON([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Entries, tt.want) {
				t.Errorf("entries = %v, want %v", got.Entries, tt.want)
			}
			if !slices.Equal(got.Ignored, tt.ignored) {
				t.Errorf("ignored = %q, want %q", got.Ignored, tt.ignored)
			}
		})
	}
}

func TestParseDockercfg(t *testing.T) {
	got, err := ParseDockercfg([]byte(`{"https://index.docker.io/v1/":{"auth":"` + b64("u:p") + `","email":"x"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := []Entry{{"https://index.docker.io/v1/", Credential{Username: "u", Password: "p"}}}; !slices.Equal(got.Entries, want) {
		t.Errorf("entries = %v, want %v", got.Entries, want)
	}
	if _, err := ParseDockercfg([]byte(`{"auths":"x"}`)); err == nil {
		t.Error("a config.json-shaped file with a string for a registry parsed as .dockercfg")
	}
}

func TestParseErrorsDoNotQuoteInput(t *testing.T) {
	const secret = "s3cr3t-V4LUE"
	for _, in := range []string{
		`{"auths":{"r":{"password":"` + secret + `"` + "\x00" + `}}}`,
		`{"auths":{"r":{"password":` + secret + `}}}`,
		`{"auths":{"r":{"password":["` + secret + `"]}}}`,
		`{"auths":{"r":{"auth":"` + secret + `"}}}`,
		`{"auths":{"r":{"auth":"` + b64(secret) + `"}}}`,
	} {
		_, err1 := ParseConfigJSON([]byte(in))
		_, err2 := ParseDockercfg([]byte(in))
		for _, err := range []error{err1, err2} {
			if err != nil && (strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "s3cr")) {
				t.Errorf("error quotes the input: %v", err)
			}
		}
	}
}

func FuzzParseDockerConfigJSON(f *testing.F) {
	f.Add([]byte(`{"auths":{"r.example":{"auth":"` + b64("u:p") + `"}}}`))
	f.Add([]byte(`{"auths":{"r":{"username":"u","password":"p","identitytoken":"t"}},"credHelpers":{}}`))
	f.Add([]byte(`{"auths":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfigJSON(data)
		if err != nil {
			return
		}
		for _, e := range cfg.Entries {
			if e.Username == "" && e.Password == "" {
				t.Fatalf("empty credential kept for %q", e.Key)
			}
		}
		kr := &Keyring{}
		kr.Add(cfg.Entries)
		_ = kr.Lookup("docker.io/library/nginx")
	})
}

func FuzzParseDockercfg(f *testing.F) {
	f.Add([]byte(`{"https://index.docker.io/v1/":{"auth":"` + b64("u:p") + `"}}`))
	f.Add([]byte(`{"r":{"auth":"dTpw"}}`))
	f.Add([]byte(`{"r":{"auth":"=="}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseDockercfg(data)
		if err != nil {
			return
		}
		for _, e := range cfg.Entries {
			if e.Username == "" && e.Password == "" {
				t.Fatalf("empty credential kept for %q", e.Key)
			}
		}
	})
}
