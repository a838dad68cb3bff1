// Package envflag gives every command-line flag an environment variable:
// PULLWATCH_ plus the flag name in upper case with - as _, unless a flag
// names its own (NODE_NAME, KUBECONFIG). A flag given on the command line
// wins over the environment; both go through the same checks and errors.
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// Set is a flag set with environment variables and a usage text that
// explains the command.
type Set struct {
	*flag.FlagSet
	usageLine string
	summary   string
	envNames  map[string]string
}

// New returns a Set for the command whose usage line (e.g.
// "pullwatch-agent check [flags]") and summary (what it does, in prose)
// head its --help.
func New(name, usageLine, summary string) *Set {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// Errors are returned and --help printed by Parse, so the flag package
	// itself prints nothing.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &Set{FlagSet: fs, usageLine: usageLine, summary: summary, envNames: map[string]string{}}
}

// Env sets the environment variable name for a flag.
func (s *Set) Env(flagName, env string) { s.envNames[flagName] = env }

// EnvVar returns the environment variable of a flag.
func (s *Set) EnvVar(flagName string) string {
	if e, ok := s.envNames[flagName]; ok {
		return e
	}
	return "PULLWATCH_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses args and then, for flags not given there, the environment
// through getenv. On --help it writes the usage to out and returns
// flag.ErrHelp. Other errors name the flag or variable and what it accepts.
func (s *Set) Parse(args []string, getenv func(string) string, out io.Writer) error {
	if err := s.FlagSet.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			s.PrintUsage(out)
		}
		return err
	}
	if s.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: all settings are flags (see --help)", s.Arg(0))
	}
	given := map[string]bool{}
	s.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	s.VisitAll(func(f *flag.Flag) {
		env := s.EnvVar(f.Name)
		v := getenv(env)
		if err != nil || given[f.Name] || v == "" {
			return
		}
		if setErr := s.Set(f.Name, v); setErr != nil {
			err = fmt.Errorf("invalid value %q for %s (--%s): %w", v, env, f.Name, setErr)
		}
	})
	return err
}

// PrintUsage writes the --help text.
func (s *Set) PrintUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n\nEvery flag can also be set with the environment variable shown next to it.\nA flag given on the command line wins over the environment.\n\nFlags:\n", s.usageLine, strings.TrimSpace(s.summary))
	s.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		def := ""
		if f.DefValue != "" {
			def = ", default " + f.DefValue
		}
		fmt.Fprintf(w, "  --%s %s\n        %s\n        (env %s%s)\n", f.Name, typ, usage, s.EnvVar(f.Name), def)
	})
}
