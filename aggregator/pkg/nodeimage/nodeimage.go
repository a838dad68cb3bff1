// Package nodeimage is one node's report of one image as the aggregator
// keeps it (issue 21): the report, shared by every node whose report of
// the image is the same but for what is the node's alone, and beside it
// the node's own containers and its endpoints' latencies.
//
// At 15,000 nodes × 100 images a report per node per image is 1.5 million
// protobuf messages. Most of them are a delegated image folded with the
// one shared result of its probers (aggregator/pkg/shard), equal on every
// node but for the pods that run it; after an aggregator restart, before
// any plan, every node checks every image itself, and those reports are
// equal on every node but for the pods, the probes' latencies and times.
// Keeping those apart lets the nodes hold one report between them (a
// Table does the sharing): 1.5 million own reports were 1 GB of the heap,
// and the garbage collector ran without pause under a 2Gi container's
// soft memory limit.
package nodeimage

import (
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Image is one node's report of one image. Its methods are the report's
// getters (GetImage, GetStatus, ...), except GetContainers, which is the
// node's containers: the embedded report may be shared between nodes and
// its own containers are then nil. Like everything in the state store, an
// Image and what it points to are never modified once stored.
type Image struct {
	*pb.ImageReport
	// Containers are the node's containers that use the image.
	Containers []*pb.ContainerRef
	// Latencies are the node's probe latencies of the report's endpoints
	// (by index; a negative one: none measured) when the report is of the
	// node's own check and shared (Table.Keep); nil when the endpoints
	// carry their own (Endpoint Latency says which).
	Latencies []time.Duration
}

// EndpointLatency is the node's probe latency of the report's endpoint i,
// and whether one was measured.
func (im Image) EndpointLatency(i int) (time.Duration, bool) {
	if im.Latencies != nil {
		if i < len(im.Latencies) && im.Latencies[i] >= 0 {
			return im.Latencies[i], true
		}
		return 0, false
	}
	if l := im.GetEndpoints()[i].GetLatency(); l != nil {
		return l.AsDuration(), true
	}
	return 0, false
}

// GetContainers is the node's containers that use the image.
func (im Image) GetContainers() []*pb.ContainerRef { return im.Containers }

// Of is im as an Image of its own (nothing shared). im is kept, not
// copied.
func Of(im *pb.ImageReport) Image { return Image{ImageReport: im, Containers: im.GetContainers()} }

// All is Of of each report.
func All(ims ...*pb.ImageReport) []Image {
	out := make([]Image, len(ims))
	for i, im := range ims {
		out[i] = Of(im)
	}
	return out
}

// Proto is the report as the store keeps it, as one message (a copy when
// the report is shared): for a reader that needs the message itself. A
// shared report of the node's own check lacks what no reader of the state
// looks at (Table.Keep: check times, rate-limit answers).
func (im Image) Proto() *pb.ImageReport {
	if sameSlice(im.ImageReport.GetContainers(), im.Containers) && im.Latencies == nil {
		return im.ImageReport
	}
	out := proto.CloneOf(im.ImageReport)
	out.Containers = im.Containers
	for i, d := range im.Latencies {
		if d >= 0 && i < len(out.Endpoints) {
			out.Endpoints[i].Latency = durationpb.New(d)
		}
	}
	return out
}

// Size is the report's encoded size (proto.Size of Proto), without
// building it.
func (im Image) Size() int {
	if im.ImageReport == nil {
		return 0
	}
	return proto.Size(im.ImageReport) - containersSize(im.ImageReport.GetContainers()) + containersSize(im.Containers)
}

// What one repeated element costs in memory beyond its encoding, once
// decoded (measured by TestHeldSizeCoversDecoding): a message is a Go
// struct behind a pointer (its state, size cache, unknown fields and a
// string header per field, rounded up to a size class), where an empty
// one is two bytes on the wire; a string is a 16-byte header.
const (
	heldPerMessage = 176
	heldPerString  = 16
	heldPerLatency = 8
)

// HeldSize is Size plus what the report's repeated elements cost in
// memory beyond their encoding: the aggregator's per-node byte budget
// (--max-node-bytes) counts this, so that 4 MiB of empty container
// entries (2 bytes each on the wire) cannot decode to 300 MB.
func (im Image) HeldSize() int {
	if im.ImageReport == nil {
		return 0
	}
	return im.Size() + heldPerMessage*(len(im.Containers)+len(im.ImageReport.GetEndpoints())) +
		heldPerString*len(im.ImageReport.GetRepoDigests()) + heldPerLatency*len(im.Latencies)
}

// containersSize is what cs add to an encoded ImageReport: each a
// length-delimited field 9 (one byte of tag).
func containersSize(cs []*pb.ContainerRef) int {
	n := 0
	for _, c := range cs {
		s := proto.Size(c)
		n += 1 + protowire.SizeVarint(uint64(s)) + s
	}
	return n
}

func sameSlice(a, b []*pb.ContainerRef) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
