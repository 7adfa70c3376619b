package httploop

import (
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// maxBuffered is the most of a body held back to go out with the header
// in one write (and to learn its length when the handler set none).
const maxBuffered = 16 << 10

// response is the loop's http.ResponseWriter. A body of up to maxBuffered
// goes out with the header in one write when the handler returns; a
// larger one goes out as it is written, with the Content-Length the
// handler set or else chunked. It also keeps the connection's ReadFrom
// (sendfile) for bodies from files.
type response struct {
	cn     *conn
	header http.Header

	status     int
	head       []byte // status line and header, once WriteHeader ran
	body       []byte // held back body bytes
	declared   int64  // the Content-Length set, or -1
	written    int64  // body bytes taken from the handler
	sent       bool   // the header went out
	typed      bool   // the handler set a Content-Type (or none is to be sniffed)
	dated      bool   // the handler set a Date
	noBody     bool   // a status without a body (1xx, 204, 304)
	chunked    bool
	inChunk    bool // a chunk was sent, its CRLF not yet
	closeAfter bool
	err        error // a write failed: the connection is done
}

func (w *response) reset(closeAfter bool) {
	clear(w.header)
	w.status, w.declared, w.written = 0, -1, 0
	w.head, w.body = w.head[:0], w.body[:0]
	w.sent, w.chunked, w.inChunk, w.closeAfter, w.err = false, false, false, closeAfter, nil
	w.typed, w.dated, w.noBody = false, false, false
}

func (w *response) Header() http.Header { return w.header }

// WriteHeader takes the status and the header as they are now, as
// net/http's does.
func (w *response) WriteHeader(code int) {
	if w.status != 0 || code < 200 {
		return // a second call, or an informational status (never sent here)
	}
	w.status = code
	_, w.dated = w.header["Date"]
	if !bodyAllowed(code) {
		// As net/http: no body, so no length, encoding or (304) type.
		w.noBody = true
		delete(w.header, "Content-Length")
		delete(w.header, "Transfer-Encoding")
		if code == http.StatusNotModified {
			delete(w.header, "Content-Type")
		}
	}
	_, w.typed = w.header["Content-Type"]
	if ce := w.header.Get("Content-Encoding"); ce != "" || w.noBody {
		w.typed = true // never sniffed, as net/http
	}
	for _, v := range w.header["Connection"] {
		if strings.EqualFold(strings.TrimSpace(v), "close") {
			w.closeAfter = true
		}
	}
	if cl := w.header.Get("Content-Length"); cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 {
			w.header.Del("Content-Length")
		} else {
			w.declared = n
		}
	}
	w.head = appendStatusLine(w.head, code)
	w.head = appendHeader(w.head, w.header)
}

func (w *response) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody {
		return 0, http.ErrBodyNotAllowed
	}
	if w.declared >= 0 && w.written+int64(len(p)) > w.declared {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if !w.sent && len(w.body)+len(p) <= maxBuffered {
		w.body = append(w.body, p...)
		return len(p), nil
	}
	if !w.sent {
		if err := w.sendHeader(p); err != nil {
			return 0, err
		}
	}
	if w.chunked {
		return w.writeChunk(p)
	}
	return w.write(p)
}

// ReadFrom sends src through the connection's own ReadFrom (sendfile for
// files) when the length is declared, or, chunked, when src is an
// *io.LimitedReader over a regular file holding all its N bytes: then as
// one chunk of N bytes. Otherwise it writes in pieces.
func (w *response) ReadFrom(src io.Reader) (int64, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	rf, ok := w.cn.c.(io.ReaderFrom)
	lr, limited := src.(*io.LimitedReader)
	if !ok || !limited || !w.typed && !w.sent || w.noBody {
		// Through Write, which holds the declared length (and sniffs the
		// Content-Type).
		return io.Copy(writerOnly{w}, src)
	}
	if w.declared < 0 {
		return w.readChunkFrom(rf, lr)
	}
	if lr.N > w.declared-w.written {
		return io.Copy(writerOnly{w}, src)
	}
	if !w.sent {
		if err := w.sendHeader(nil); err != nil {
			return 0, err
		}
	}
	n, err := rf.ReadFrom(lr)
	w.written += n
	if err != nil {
		w.fail(err)
	}
	return n, err
}

// readChunkFrom sends lr, over a file that holds its N bytes, as one chunk
// through the connection's ReadFrom: the chunk's size line, then the file
// (sendfile); its CRLF goes with what comes next. A file that still ends
// short (it shrank meanwhile) leaves a chunk that cannot be finished: the
// connection is done, as with a body shorter than its Content-Length.
func (w *response) readChunkFrom(rf io.ReaderFrom, lr *io.LimitedReader) (int64, error) {
	f, file := lr.R.(*os.File)
	if !file || lr.N <= 0 || !fileHolds(f, lr.N) {
		return io.Copy(writerOnly{w}, lr)
	}
	if !w.sent {
		if err := w.sendHeader(nil); err != nil {
			return 0, err
		}
	}
	want := lr.N
	w.body = w.chunkHead(w.body[:0], int(want))
	_, err := w.write(w.body)
	w.body = w.body[:0]
	if err != nil {
		return 0, err
	}
	n, err := rf.ReadFrom(lr)
	w.written += n
	if err == nil && n < want {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		w.fail(err)
	}
	return n, err
}

// fileHolds reports whether f is a regular file with at least n bytes from
// its offset on. A variable for tests.
var fileHolds = func(f *os.File, n int64) bool {
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	off, err := f.Seek(0, io.SeekCurrent)
	return err == nil && fi.Size()-off >= n
}

type writerOnly struct{ io.Writer }

// Flush sends the header and what is held back.
func (w *response) Flush() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err == nil && !w.sent {
		w.sendHeader(nil)
	}
}

// sendHeader sends the header with the body held back so far: with the
// declared length, or chunked. next is what is written after it, for a
// Content-Type sniffed as net/http does when the handler set none.
func (w *response) sendHeader(next []byte) error {
	if !w.typed {
		sample := w.body
		if len(sample) == 0 {
			sample = next
		}
		if len(sample) > 0 {
			w.head = append(w.head, "Content-Type: "...)
			w.head = append(w.head, http.DetectContentType(sample)...)
			w.head = append(w.head, "\r\n"...)
		}
	}
	if w.declared < 0 && !w.noBody {
		w.chunked = true
		w.head = append(w.head, "Transfer-Encoding: chunked\r\n"...)
	}
	w.head = w.endHeader(w.head)
	w.sent = true
	body := w.body
	w.body = w.body[:0]
	if w.chunked {
		if len(body) == 0 {
			_, err := w.write(w.head)
			return err
		}
		w.head = w.chunkHead(w.head, len(body))
		w.head = append(w.head, body...)
		_, err := w.write(w.head)
		return err
	}
	w.head = append(w.head, body...)
	_, err := w.write(w.head)
	return err
}

// endHeader adds Date, Connection and the blank line.
func (w *response) endHeader(b []byte) []byte {
	if !w.dated {
		b = append(b, "Date: "...)
		b = append(b, date()...)
		b = append(b, "\r\n"...)
	}
	if w.closeAfter || w.cn.s.shutting.Load() {
		w.closeAfter = true
		b = append(b, "Connection: close\r\n"...)
	}
	return append(b, "\r\n"...)
}

// writeChunk sends p as one chunk: the CRLF that ends the chunk before it
// goes with this one's size line, so a large chunk costs two writes (a
// small one is copied to go in one).
func (w *response) writeChunk(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	w.body = w.chunkHead(w.body[:0], len(p))
	if len(p) <= 4<<10 {
		w.body = append(w.body, p...)
		_, err := w.write(w.body)
		w.body = w.body[:0]
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	_, err := w.write(w.body)
	w.body = w.body[:0]
	if err != nil {
		return 0, err
	}
	return w.write(p)
}

// chunkHead appends the end of the chunk before, if any, and the size
// line of one of n bytes.
func (w *response) chunkHead(b []byte, n int) []byte {
	if w.inChunk {
		b = append(b, "\r\n"...)
	}
	w.inChunk = true
	b = strconv.AppendInt(b, int64(n), 16)
	return append(b, "\r\n"...)
}

func (w *response) write(p []byte) (int, error) {
	n, err := w.cn.c.Write(p)
	if err != nil {
		w.fail(err)
	}
	return n, err
}

// fail records a failed write: the connection is done, and the handler's
// context ends.
func (w *response) fail(err error) {
	w.err = err
	if w.cn.cancel != nil {
		w.cn.cancel()
	}
}

// finish completes the response once the handler returned; false when
// the connection must close (a write failed, the body was shorter than
// declared, or the request or the server asked for it).
func (w *response) finish() (keepAlive bool) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return false
	}
	if !w.sent {
		if w.declared < 0 && !w.noBody {
			w.declared = int64(len(w.body))
			w.head = append(w.head, "Content-Length: "...)
			w.head = strconv.AppendInt(w.head, w.declared, 10)
			w.head = append(w.head, "\r\n"...)
		}
		if w.written < w.declared {
			// net/http sends the header and closes: the client sees a
			// short body, never a complete-looking one.
			w.closeAfter = true
		}
		if w.sendHeader(nil) != nil {
			return false
		}
		return !w.closeAfter
	}
	if w.chunked {
		end := "0\r\n\r\n"
		if w.inChunk {
			end = "\r\n0\r\n\r\n"
		}
		if _, err := io.WriteString(writerOnly{w.cn.c}, end); err != nil {
			return false
		}
	} else if w.written < w.declared {
		return false
	}
	return !w.closeAfter
}

// bodyAllowed is net/http's rule: no body with 1xx, 204 or 304.
func bodyAllowed(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

func appendStatusLine(b []byte, code int) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	b = append(b, text...)
	return append(b, "\r\n"...)
}

// appendHeader writes the header in sorted key order, as net/http does,
// with line breaks in values made spaces. Connection and
// Transfer-Encoding are the loop's to write.
func appendHeader(b []byte, h http.Header) []byte {
	var small [8]string
	keys := small[:0]
	for k := range h {
		switch {
		case k == "Connection", k == "Transfer-Encoding":
			continue
		case !validHeaderName(k):
			continue // dropped, as net/http drops it
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			b = append(b, k...)
			b = append(b, ": "...)
			if strings.ContainsAny(v, "\r\n") {
				v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
			}
			b = append(b, strings.TrimSpace(v)...)
			b = append(b, "\r\n"...)
		}
	}
	return b
}

func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for i := range len(k) {
		if !isTokenByte(k[i]) {
			return false
		}
	}
	return true
}

// date is the Date header's value, formatted once a second.
func date() string {
	now := time.Now().Unix()
	if d := cachedDate.Load(); d != nil && d.unix == now {
		return d.text
	}
	d := &dateText{unix: now, text: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.text
}

type dateText struct {
	unix int64
	text string
}

var cachedDate atomic.Pointer[dateText]
