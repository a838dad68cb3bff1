// Package nodeimage is one node's report of one image as the aggregator
// keeps it (issue 21): the report, shared by every node whose report of
// the image is the same but for what is the node's alone, and beside it
// the node's own containers, as plain values, and its endpoints'
// latencies.
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
// soft memory limit. Keeping the containers as values rather than
// messages (a million at that scale) halves what they take and leaves the
// garbage collector a million fewer objects to trace.
package nodeimage

import (
	"time"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Image is one node's report of one image. Its methods are the report's
// getters (GetImage, GetStatus, ...), except GetContainers, which is the
// node's containers: the embedded report may be shared between nodes, and
// a report the store keeps has no containers of its own (Table.Keep). Like
// everything in the state store, an Image and what it points to are never
// modified once stored.
type Image struct {
	*pb.ImageReport
	// Containers are the node's containers that use the image.
	Containers []Container
	// Latencies are the node's probe latencies of the report's endpoints
	// (by index; a negative one: none measured) when the report is of the
	// node's own check and shared (Table.Keep); nil when the endpoints
	// carry their own (EndpointLatency says which).
	Latencies []time.Duration
	// reportSize is the encoded size of the report without containers, as
	// a Table keeps it (0: not known, Size computes it).
	reportSize int32
}

// Container is a pb.ContainerRef as the store keeps it: a value, without
// the container id (no reader uses it; ingest drops it before storing).
// The namespace, container name and state are interned by the probe
// planner (aggregator/pkg/shard), when sharding is on, before the report
// is stored.
type Container struct {
	Namespace, Pod, PodUID, Container, State string
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
func (im Image) GetContainers() []Container { return im.Containers }

// Of is im as an Image of its own (nothing shared), for a reader that
// holds a report rather than the store's Image. im is kept, not copied,
// and not changed: its containers are copied into Image.Containers.
func Of(im *pb.ImageReport) Image {
	return Image{ImageReport: im, Containers: containersOf(im.GetContainers())}
}

// All is Of of each report.
func All(ims ...*pb.ImageReport) []Image {
	out := make([]Image, len(ims))
	for i, im := range ims {
		out[i] = Of(im)
	}
	return out
}

// containersOf is cs as values (nil when there are none).
func containersOf(cs []*pb.ContainerRef) []Container {
	if len(cs) == 0 {
		return nil
	}
	out := make([]Container, len(cs))
	for i, c := range cs {
		out[i] = Container{Namespace: c.GetNamespace(), Pod: c.GetPod(), PodUID: c.GetPodUid(), Container: c.GetContainer(), State: c.GetState()}
	}
	return out
}

// Proto is the report as the store keeps it, as one message (a new one
// when the image has containers or latencies of its own): for a reader
// that needs the message itself. It lacks the container ids, and a shared
// report of the node's own check lacks what no reader of the state looks
// at (Table.Keep: check times, rate-limit answers).
func (im Image) Proto() *pb.ImageReport {
	if im.ImageReport == nil || len(im.Containers)+len(im.ImageReport.GetContainers())+len(im.Latencies) == 0 {
		return im.ImageReport
	}
	out := proto.CloneOf(im.ImageReport)
	out.Containers = make([]*pb.ContainerRef, len(im.Containers))
	for i, c := range im.Containers {
		out.Containers[i] = &pb.ContainerRef{Namespace: c.Namespace, Pod: c.Pod, PodUid: c.PodUID, Container: c.Container, State: c.State}
	}
	for i, d := range im.Latencies {
		if d >= 0 && i < len(out.Endpoints) {
			out.Endpoints[i].Latency = durationpb.New(d)
		}
	}
	return out
}

// Size is the encoded size of the report as kept, with the node's
// containers (proto.Size of Proto but for the latencies kept beside a
// shared own check), without building it; a Table's image knows its
// report's size, so that a byte budget need not size it again.
func (im Image) Size() int {
	if im.ImageReport == nil {
		return 0
	}
	n := int(im.reportSize)
	if n == 0 {
		n = proto.Size(im.ImageReport)
	}
	for _, c := range im.ImageReport.GetContainers() {
		s := proto.Size(c)
		n -= 1 + protowire.SizeVarint(uint64(s)) + s
	}
	for _, c := range im.Containers {
		s := c.size()
		n += 1 + protowire.SizeVarint(uint64(s)) + s // field 9, one byte of tag
	}
	return n
}

// size is c's encoded size as a pb.ContainerRef.
func (c Container) size() int {
	n := 0
	for _, s := range [...]string{c.Namespace, c.Pod, c.PodUID, c.Container, c.State} {
		if s != "" {
			n += 1 + protowire.SizeVarint(uint64(len(s))) + len(s) // fields 1-4 and 6, one byte of tag
		}
	}
	return n
}

// What one repeated element costs in memory beyond its encoding, once
// kept (measured by TestHeldSizeCoversDecoding): an endpoint is a message,
// a Go struct behind a pointer (its state, size cache, unknown fields and
// a string header per field, rounded up to a size class), where an empty
// one is two bytes on the wire; a container is a Container value (five
// string headers); a string is a 16-byte header.
const (
	heldPerMessage   = 176
	heldPerContainer = int(unsafe.Sizeof(Container{}))
	heldPerString    = 16
	heldPerLatency   = 8
)

// HeldSize is Size plus what the report's repeated elements cost in
// memory beyond their encoding: the aggregator's per-node byte budget
// (--max-node-bytes) counts this, so that 4 MiB of empty container
// entries (2 bytes each on the wire) cannot be kept as 160 MB.
func (im Image) HeldSize() int {
	if im.ImageReport == nil {
		return 0
	}
	return im.Size() + heldPerContainer*len(im.Containers) + heldPerMessage*len(im.ImageReport.GetEndpoints()) +
		heldPerString*len(im.ImageReport.GetRepoDigests()) + heldPerLatency*len(im.Latencies)
}

// HeldSizeOf is the HeldSize of im as a Table keeps a node's own check
// (its endpoints' latencies beside it), without copying anything: the
// same for containers without an id (as ingest leaves them), more for
// containers with one, and more than a folded report holds.
func HeldSizeOf(im *pb.ImageReport) int {
	if im == nil {
		return 0
	}
	return proto.Size(im) + HeldBeyondEncoding(im)
}

// HeldBeyondEncoding is HeldSizeOf(im) less im's encoded size: what its
// repeated elements hold in memory beyond their encoding.
func HeldBeyondEncoding(im *pb.ImageReport) int {
	return heldPerContainer*len(im.GetContainers()) + (heldPerMessage+heldPerLatency)*len(im.GetEndpoints()) +
		heldPerString*len(im.GetRepoDigests())
}
