package credentials

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
)

type fixed struct {
	creds []Credential
	err   error
}

func (f fixed) Lookup(context.Context, imageref.Ref, []Pod) ([]Credential, error) {
	return f.creds, f.err
}

func TestChain(t *testing.T) {
	c := Chain{
		fixed{creds: []Credential{{"a", "1", SourcePullSecret}, {"b", "2", SourcePullSecret}}},
		fixed{creds: []Credential{{"a", "1", SourceNodeKeyring}, {"c", "3", SourceNodeKeyring}}, err: errors.New("keyring broke")},
		fixed{creds: []Credential{{"b", "2", SourceCredentialProvider}, {"b", "other", SourceCredentialProvider}}, err: errors.New("plugin broke")},
	}
	got, err := c.Lookup(context.Background(), mustRef(t, "r.example/x:1"), nil)
	want := []Credential{{"a", "1", SourcePullSecret}, {"b", "2", SourcePullSecret}, {"c", "3", SourceNodeKeyring}, {"b", "other", SourceCredentialProvider}}
	if !slices.Equal(got, want) {
		t.Errorf("chain = %#v, want %#v", got, want)
	}
	if err == nil || !strings.Contains(err.Error(), "keyring broke") || !strings.Contains(err.Error(), "plugin broke") {
		t.Errorf("err = %v", err)
	}
	if creds, err := (Chain{}).Lookup(context.Background(), mustRef(t, "r.example/x:1"), nil); creds != nil || err != nil {
		t.Errorf("empty chain: %v %v", creds, err)
	}
}

func TestNewChainOrder(t *testing.T) {
	ps := &PullSecrets{}
	kr := NewNodeKeyring(KeyringOptions{DockerConfig: "/nonexistent", Log: quiet})
	pl := &Plugins{}
	c := NewChain(ps, kr, pl)
	if len(c) != 3 || c[0] != Provider(ps) || c[1] != Provider(kr) || c[2] != Provider(pl) {
		t.Errorf("order %v", c)
	}
	if c := NewChain(nil, kr, nil); len(c) != 1 {
		t.Errorf("nil sources kept: %d", len(c))
	}
}
