package envflag

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The flag.Value types below check values as they are set, so that the
// command line and the environment get the same checks and messages.
// Use them as fs.Var((*envflag.PositiveDuration)(&opts.Interval), ...).

// ListenAddr is a host:port to listen on.
type ListenAddr string

func (a *ListenAddr) String() string { return string(*a) }

// Set implements flag.Value.
func (a *ListenAddr) Set(s string) error {
	if _, port, err := net.SplitHostPort(s); err != nil || port == "" {
		return errors.New("want host:port, such as :9400 or 127.0.0.1:9400")
	}
	*a = ListenAddr(s)
	return nil
}

// PositiveDuration is a duration above zero.
type PositiveDuration time.Duration

func (d *PositiveDuration) String() string { return time.Duration(*d).String() }

// Set implements flag.Value.
func (d *PositiveDuration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		return errors.New("want a positive duration such as 90s, 3m or 1h")
	}
	*d = PositiveDuration(v)
	return nil
}

// LogLevel is a slog level by name.
type LogLevel slog.Level

func (l *LogLevel) String() string { return strings.ToLower(slog.Level(*l).String()) }

// Set implements flag.Value.
func (l *LogLevel) Set(s string) error {
	var v slog.Level
	if err := v.UnmarshalText([]byte(s)); err != nil {
		return errors.New("want debug, info, warn or error")
	}
	*l = LogLevel(v)
	return nil
}

// Choice is one of a fixed list of words.
type Choice struct {
	Value   *string
	Choices []string
}

func (c *Choice) String() string {
	if c.Value == nil {
		return ""
	}
	return *c.Value
}

// Set implements flag.Value.
func (c *Choice) Set(s string) error {
	if !slices.Contains(c.Choices, s) {
		return fmt.Errorf("want %s", strings.Join(c.Choices, " or "))
	}
	*c.Value = s
	return nil
}

// IntRange is a whole number within [Min, Max].
type IntRange struct {
	Value    *int
	Min, Max int
}

func (r *IntRange) String() string {
	if r.Value == nil {
		return ""
	}
	return fmt.Sprint(*r.Value)
}

// Set implements flag.Value.
func (r *IntRange) Set(s string) error {
	var v int
	if _, err := fmt.Sscan(s, &v); err != nil || fmt.Sprint(v) != strings.TrimSpace(s) || v < r.Min || v > r.Max {
		return fmt.Errorf("want a whole number from %d to %d", r.Min, r.Max)
	}
	*r.Value = v
	return nil
}

// FloatRange is a number within [Min, Max].
type FloatRange struct {
	Value    *float64
	Min, Max float64
}

func (r *FloatRange) String() string {
	if r.Value == nil {
		return ""
	}
	return strconv.FormatFloat(*r.Value, 'g', -1, 64)
}

// Set implements flag.Value.
func (r *FloatRange) Set(s string) error {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(v) || v < r.Min || v > r.Max {
		return fmt.Errorf("want a number from %g to %g", r.Min, r.Max)
	}
	*r.Value = v
	return nil
}

// KeyValues is a comma-separated list of key=value pairs.
type KeyValues struct {
	Value *map[string]string
}

func (kv *KeyValues) String() string {
	if kv.Value == nil || len(*kv.Value) == 0 {
		return ""
	}
	keys := make([]string, 0, len(*kv.Value))
	for k := range *kv.Value {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		keys[i] = k + "=" + (*kv.Value)[k]
	}
	return strings.Join(keys, ",")
}

// Set implements flag.Value.
func (kv *KeyValues) Set(s string) error {
	m := map[string]string{}
	for _, pair := range strings.Split(s, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("%q is not key=value; want key=value,key=value", pair)
		}
		m[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	*kv.Value = m
	return nil
}

// List is a comma-separated list of words; blanks around them and empty
// entries are dropped.
type List []string

func (l *List) String() string { return strings.Join(*l, ",") }

// Set implements flag.Value.
func (l *List) Set(s string) error {
	var out []string
	for _, w := range strings.Split(s, ",") {
		if w = strings.TrimSpace(w); w != "" {
			out = append(out, w)
		}
	}
	*l = out
	return nil
}
