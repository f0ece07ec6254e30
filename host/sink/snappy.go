package sink

import (
	"io"
	"os"

	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/snappy"
)

// arrow-go encodes Snappy with klauspost's snappy.Encode, which is
// s2.EncodeSnappyBetter: a slower mode that trades speed for a few percent
// of size, and took about a fifth of the sink's time writing the benchmark
// table. s2.EncodeSnappy is the default-speed encoder of the same Snappy
// block format (any Snappy decoder reads it), comparable to the C++ snappy
// pyarrow uses. Codecs are registered process-wide and arrow-go documents
// init() as the place to do it, so this is the one init in the package; it
// changes only how Snappy pages are encoded, never how they are read.
func init() {
	if os.Getenv("XX_BETTER") == "" {
		compress.RegisterCodec(compress.Codecs.Snappy, fastSnappy{})
	}
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
