// Package grpcraw sends messages encoded once, ahead of time, over gRPC:
// a client stream opened with grpc.ForceCodec(Codec{}) sends a Message as
// its bytes are and every other message as protobuf, and decodes what it
// receives as protobuf. Load and abuse tests (pwload, the forged agent of
// e2e/installed) encode their messages before the clock starts, or once
// for many sends.
package grpcraw

import "google.golang.org/protobuf/proto"

// Message is an encoded protobuf message, sent as it is.
type Message []byte

// Codec is gRPC's "proto" codec but for sending a Message unchanged.
type Codec struct{}

// Marshal returns a Message's bytes, or v encoded as protobuf.
func (Codec) Marshal(v any) ([]byte, error) {
	if r, ok := v.(Message); ok {
		return r, nil
	}
	return proto.Marshal(v.(proto.Message))
}

// Unmarshal decodes data as protobuf into v.
func (Codec) Unmarshal(data []byte, v any) error { return proto.Unmarshal(data, v.(proto.Message)) }

// Name is "proto": the server decodes as it always does.
func (Codec) Name() string { return "proto" }
