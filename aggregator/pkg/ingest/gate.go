package ingest

import (
	"runtime"
	"time"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// gate bounds the agent messages that are decoded and not yet applied.
//
// Applying a message is serialized (the probe planner takes one message at
// a time), decoding is not: when every agent sends at once, after an
// aggregator restart or in a round of snapshots, gRPC decoded each stream's
// message as soon as its bytes arrived, and 15,000 decoded snapshots (each
// a hundred reports, thousands of small objects) waited for the planner
// together. Near the soft memory limit the garbage collector then ran
// without pause (issue 21: a round of 15,000 snapshots took 127 s of CPU).
// With the gate a message is decoded only once a slot is free, and its
// slot is freed once it is applied, before its ack is sent: the bytes of
// the messages still waiting stay in gRPC's buffers, bounded per stream by
// HTTP/2 flow control and free of pointers for the collector to trace.
type gate struct {
	slots chan struct{}
}

// gateSlots is how many messages may be decoded and not yet applied: enough
// for every CPU to decode while one message is applied.
func gateSlots() int { return max(4, 2*runtime.GOMAXPROCS(0)) }

func newGate(n int) *gate { return &gate{slots: make(chan struct{}, n)} }

func (g *gate) enter() { g.slots <- struct{}{} }
func (g *gate) leave() { <-g.slots }

// handoverWait is how long a decoded message keeps its slot while its
// stream's Report loop does not take it (it is sending to an agent that
// does not read): past it the slot is freed, so that agents that stop
// reading cannot hold every slot and starve the others; the message then
// waits uncounted, as every message did before the gate.
const handoverWait = time.Second

// gatedCodec is gRPC's proto codec, but for decoding an AgentMessage only
// once the gate has a slot for it (the slot is the message's until
// Server.Report applied it; see received.counted). Every other message is
// decoded as the proto codec does.
type gatedCodec struct {
	encoding.CodecV2
	gate *gate
}

func newGatedCodec(g *gate) gatedCodec {
	return gatedCodec{CodecV2: encoding.GetCodecV2(grpcproto.Name), gate: g}
}

func (c gatedCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if _, ok := v.(*pullwatchv1.AgentMessage); !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	c.gate.enter()
	if err := c.CodecV2.Unmarshal(data, v); err != nil {
		c.gate.leave()
		return err
	}
	return nil
}
