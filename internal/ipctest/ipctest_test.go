package ipctest

import "testing"

func TestMessages(t *testing.T) {
	v := Valid(8)
	ms := Messages(v)
	if len(ms) != 2 || len(ms[1].Buffers) != 5 || len(ms[1].Nodes) != 2 || ms[1].LengthAt == 0 || ms[0].FieldsLenAt == 0 {
		t.Fatalf("messages %+v", ms)
	}
	if end := ms[1].Body + int(ms[1].BodyLen); end+8 != len(v) {
		t.Errorf("the batch ends at %d, the stream (with its 8-byte end marker) at %d", end, len(v))
	}
	if len(Malformed(8)) < 20 {
		t.Errorf("%d variants", len(Malformed(8)))
	}
}
