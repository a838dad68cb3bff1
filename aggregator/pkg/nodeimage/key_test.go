package nodeimage

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// leftOut are the fields of ImageReport that the Table's key deliberately
// leaves out, and why. Every other field, and every field of the messages
// below it (endpoints, timestamps, durations), tells reports apart.
var leftOut = map[protoreflect.Name]string{
	"containers": "Keep takes them out before sharing the report: each node keeps its own in Image.Containers",
}

// TestKeyCoversEveryField walks ImageReport through protoreflect: a folded
// report with every field set, and for each field (and each field of the
// messages in it, recursively) a copy with that one field changed, unset
// or given one more element. Keep must share the copy with the original
// exactly when the field is in leftOut, so a field added to the proto
// later is either in the key or listed here with its reason.
func TestKeyCoversEveryField(t *testing.T) {
	base := &pb.ImageReport{}
	fill(base.ProtoReflect())
	base.SharedFrom = "prober" // folded: only those are shared

	md := base.ProtoReflect().Descriptor()
	for name := range leftOut {
		if md.Fields().ByName(name) == nil {
			t.Errorf("leftOut names %s, not a field of %s", name, md.FullName())
		}
	}
	tb := NewTable()
	if a, b := tb.Keep(proto.CloneOf(base)), tb.Keep(proto.CloneOf(base)); a.ImageReport != b.ImageReport {
		t.Fatal("two equal reports (endpoints equal, not one slice) are not shared")
	}
	vs := variants(md)
	vs = append(vs, variant{"unknown fields", func(m protoreflect.Message) {
		m.SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 999, protowire.VarintType), 1))
	}})
	for _, v := range vs {
		tb := NewTable()
		a, b := proto.CloneOf(base), proto.CloneOf(base)
		v.apply(b.ProtoReflect())
		if proto.Equal(a, b) {
			t.Fatalf("%s: the variant changed nothing", v.path)
		}
		shared := tb.Keep(a).ImageReport == tb.Keep(b).ImageReport
		top := protoreflect.Name(strings.FieldsFunc(v.path, func(r rune) bool { return strings.ContainsRune(".[+ ", r) })[0])
		if _, out := leftOut[top]; out != shared {
			t.Errorf("%s: shared %v; a field the key covers must not be shared, one it leaves out (leftOut) must", v.path, shared)
		}
	}
	t.Logf("%d variants", len(vs))
}

// variant changes one field of a message, in place.
type variant struct {
	path  string
	apply func(protoreflect.Message)
}

// variants are the ways one field of a filled message of md can change.
func variants(md protoreflect.MessageDescriptor) []variant {
	var out []variant
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		name := string(fd.Name())
		switch {
		case fd.IsMap():
			panic(fmt.Sprintf("%s is a map: teach variants and fill maps", fd.FullName()))
		case fd.IsList():
			out = append(out, variant{name + "+", func(m protoreflect.Message) {
				l := m.Mutable(fd).List()
				if fd.Kind() == protoreflect.MessageKind {
					l.Append(protoreflect.ValueOfMessage(proto.Clone(l.Get(0).Message().Interface()).ProtoReflect()))
				} else {
					l.Append(l.Get(0))
				}
			}})
			if fd.Kind() == protoreflect.MessageKind {
				for _, v := range variants(fd.Message()) {
					out = append(out, variant{name + "[0]." + v.path, func(m protoreflect.Message) { v.apply(m.Mutable(fd).List().Get(0).Message()) }})
				}
			} else {
				out = append(out, variant{name + "[0]", func(m protoreflect.Message) {
					l := m.Mutable(fd).List()
					l.Set(0, changed(fd, l.Get(0)))
				}})
			}
		case fd.Kind() == protoreflect.MessageKind:
			out = append(out, variant{name + " unset", func(m protoreflect.Message) { m.Clear(fd) }})
			for _, v := range variants(fd.Message()) {
				out = append(out, variant{name + "." + v.path, func(m protoreflect.Message) { v.apply(m.Mutable(fd).Message()) }})
			}
		default:
			out = append(out, variant{name, func(m protoreflect.Message) { m.Set(fd, changed(fd, m.Get(fd))) }})
		}
	}
	return out
}

// fill sets every field of m, recursively: one element in each list.
func fill(m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			panic(fmt.Sprintf("%s is a map: teach variants and fill maps", fd.FullName()))
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := m.Mutable(fd).List()
			e := l.NewElement()
			fill(e.Message())
			l.Append(e)
		case fd.IsList():
			m.Mutable(fd).List().Append(changed(fd, fd.Default()))
		case fd.Kind() == protoreflect.MessageKind:
			fill(m.Mutable(fd).Message())
		default:
			m.Set(fd, changed(fd, fd.Default()))
		}
	}
}

// changed is a value of fd's kind other than v.
func changed(fd protoreflect.FieldDescriptor, v protoreflect.Value) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(!v.Bool())
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(v.Enum() + 1)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(v.Int()) + 1)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(v.Int() + 1)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(v.Uint()) + 1)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(v.Uint() + 1)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(v.Float()) + 1)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(v.Float() + 1)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(v.String() + "x")
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes(append([]byte{1}, v.Bytes()...))
	}
	panic(fmt.Sprintf("%s: kind %s", fd.FullName(), fd.Kind()))
}

// TestFoldedAgrees holds the reports kept by result (Table.folded) to
// the table's key: for each variant of one field of a folded report
// (folded from the same result: one endpoints slice, unless the variant
// changes the endpoints), the report kept for the first is kept for the
// second exactly when the table, looked up without them, shares the two.
func TestFoldedAgrees(t *testing.T) {
	for _, pair := range variantPairs("prober") {
		a, b := pair.a, pair.b
		if b.GetSharedFrom() == "" {
			continue // a node's own report: not folded
		}
		if slices.EqualFunc(a.Endpoints, b.Endpoints, func(x, y *pb.EndpointResult) bool { return proto.Equal(x, y) }) {
			b.Endpoints = a.Endpoints
		}
		wa, wb := proto.CloneOf(a), proto.CloneOf(b)
		tb := NewTable()
		ka := tb.Keep(a) // a itself, kept by its result
		got := tb.Keep(b).ImageReport == ka.ImageReport

		tb = NewTable()
		ka = tb.Keep(wa)
		clear(tb.byResult)
		want := tb.Keep(wb).ImageReport == ka.ImageReport
		if got != want {
			t.Errorf("%s: kept by result %v, by the table %v", pair.path, got, want)
		}
	}
}

// TestOwnKeyIsItsNodelessCopys holds the key of a node's own report
// looked at as its nodeless copy (keyOf and equalRest with own, which Keep
// uses to find a kept copy without making one) to the key of the copy
// itself: for each variant of one field, Keep shares two own reports
// exactly when the table shares their nodeless copies.
func TestOwnKeyIsItsNodelessCopys(t *testing.T) {
	for _, pair := range variantPairs("") {
		a, b := pair.a, pair.b
		if b.GetSharedFrom() != "" {
			continue // folded: TestFoldedAgrees
		}
		tb := NewTable()
		got := tb.Keep(proto.CloneOf(a)).ImageReport == tb.Keep(proto.CloneOf(b)).ImageReport

		tb = NewTable()
		ra, _ := tb.of(nodeless(a), false)
		rb, _ := tb.of(nodeless(b), false)
		if want := ra == rb; got != want {
			t.Errorf("%s: shared as own reports %v, as their nodeless copies %v", pair.path, got, want)
		}
	}
}

// variantPair is a filled report (a) and a copy of it with one field
// changed by the variant at path (b).
type variantPair struct {
	path string
	a, b *pb.ImageReport
}

// variantPairs are the pairs of every variant of a filled report whose
// shared_from is sharedFrom, and of none ("nothing": b equal to a).
func variantPairs(sharedFrom string) []variantPair {
	base := &pb.ImageReport{}
	fill(base.ProtoReflect())
	base.SharedFrom = sharedFrom
	vs := variants(base.ProtoReflect().Descriptor())
	vs = append(vs, variant{"nothing", func(protoreflect.Message) {}})
	out := make([]variantPair, len(vs))
	for i, v := range vs {
		a, b := proto.CloneOf(base), proto.CloneOf(base)
		v.apply(b.ProtoReflect())
		out[i] = variantPair{v.path, a, b}
	}
	return out
}
