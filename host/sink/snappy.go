package sink

import (
	"io"

	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/snappy"
)

// arrow-go encodes Snappy with klauspost's snappy.Encode, which is
// s2.EncodeSnappyBetter: a slow mode (~100 MB/s on numeric pages) that took
// about a fifth of the sink's time on the benchmark table (~180 ms CPU per
// million rows). s2.EncodeSnappy is the default-speed encoder of the same
// Snappy block format (any Snappy decoder reads it). The price: it looks for
// 6-byte matches where C++ snappy (pyarrow) looks for 4-byte ones, so
// columns whose values share only 4-5 bytes with their neighbours (e.g.
// microsecond timestamps) stay uncompressed; the benchmark file is ~5%
// larger than pyarrow's (the Better mode made it ~4% smaller). Choose zstd
// when size matters more than speed.
//
// Codecs are registered process-wide and arrow-go documents init() as the
// place to do it, so this is the one init in the package; it changes only
// how Snappy pages are encoded, never how they are read.
func init() {
	compress.RegisterCodec(compress.Codecs.Snappy, fastSnappy{})
}

type fastSnappy struct{}

var (
	_ compress.ErrorCodec     = fastSnappy{}
	_ compress.StreamingCodec = fastSnappy{}
)

func (fastSnappy) Encode(dst, src []byte) []byte { return s2.EncodeSnappy(dst, src) }

func (fastSnappy) EncodeLevel(dst, src []byte, _ int) []byte { return s2.EncodeSnappy(dst, src) }

func (fastSnappy) CompressBound(n int64) int64 { return int64(snappy.MaxEncodedLen(int(n))) }

func (f fastSnappy) Decode(dst, src []byte) []byte {
	out, err := f.DecodeWithError(dst, src)
	if err != nil {
		panic(err) // as arrow-go's own codec does; readers use DecodeWithError
	}
	return out
}

func (fastSnappy) DecodeWithError(dst, src []byte) ([]byte, error) { return snappy.Decode(dst, src) }

func (fastSnappy) NewReader(r io.Reader) io.ReadCloser { return io.NopCloser(snappy.NewReader(r)) }

func (fastSnappy) NewWriter(w io.Writer) io.WriteCloser { return snappy.NewBufferedWriter(w) }

func (f fastSnappy) NewWriterLevel(w io.Writer, _ int) (io.WriteCloser, error) {
	return f.NewWriter(w), nil
}
