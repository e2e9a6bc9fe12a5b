//! The session's read buffer: small while commands come in, larger while a message streams in.
//!
//! Every idle session holds its buffer, so it must be small (10,000 idle sessions are a target),
//! but a 2 KiB buffer turns a 10 KB message into five or more reads from the socket, each a
//! system call and a pass through the runtime. The session asks for a larger buffer for DATA and
//! gives it back afterwards; bytes already buffered (pipelined commands) are kept across both.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

/// A buffered reader whose capacity can change between reads without losing buffered bytes.
pub struct SessionReader<R> {
    inner: R,
    buf: Box<[u8]>,
    /// Buffered bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl<R> SessionReader<R> {
    pub fn with_capacity(capacity: usize, inner: R) -> Self {
        Self {
            inner,
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The bytes read from the socket and not yet consumed.
    pub fn buffer(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The socket half, dropping whatever is buffered (after STARTTLS that is the point: bytes
    /// pipelined behind it in plaintext must not be acted on).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Resizes the buffer for the next reads, keeping the buffered bytes; when more are buffered
    /// than `capacity` holds, the buffer stays as it is.
    pub fn set_capacity(&mut self, capacity: usize) {
        let capacity = capacity.max(1);
        let buffered = self.end - self.start;
        if capacity == self.buf.len() || buffered > capacity {
            return;
        }
        let mut buf = vec![0; capacity].into_boxed_slice();
        buf[..buffered].copy_from_slice(&self.buf[self.start..self.end]);
        self.buf = buf;
        self.start = 0;
        self.end = buffered;
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SessionReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Nothing buffered and a read at least as large as the buffer: no reason to copy twice.
        if this.start == this.end && out.remaining() >= this.buf.len() {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let available = ready!(Pin::new(&mut *this).poll_fill_buf(cx))?.len();
        let taken = available.min(out.remaining());
        out.put_slice(&this.buf[this.start..this.start + taken]);
        this.start += taken;
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for SessionReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.start == this.end {
            let mut read = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let filled = read.filled().len();
            this.start = 0;
            this.end = filled;
        }
        Poll::Ready(Ok(&this.buf[this.start..this.end]))
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        this.start = (this.start + amount).min(this.end);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn growing_and_shrinking_keep_the_buffered_bytes_in_order() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut reader = SessionReader::with_capacity(4, server);
        client
            .write_all(b"MAIL FROM:<a@b>\r\nbody")
            .await
            .expect("write");
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).await.expect("read");
        assert_eq!(line, b"MAIL FROM:<a@b>\r\n");
        // Four bytes of the body are buffered when the buffer grows: they stay first.
        let first = reader.fill_buf().await.expect("fill").to_vec();
        reader.set_capacity(1024);
        assert_eq!(reader.buffer(), first.as_slice());
        client.write_all(&[b'x'; 600]).await.expect("write");
        drop(client);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.expect("read");
        let mut expected = b"body".to_vec();
        expected.extend_from_slice(&[b'x'; 600]);
        assert_eq!(rest, expected);
    }

    #[tokio::test]
    async fn shrinking_below_what_is_buffered_waits_until_it_fits() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut reader = SessionReader::with_capacity(64, server);
        client.write_all(&[b'y'; 40]).await.expect("write");
        assert_eq!(reader.fill_buf().await.expect("fill").len(), 40);
        reader.set_capacity(8);
        assert_eq!(reader.buffer().len(), 40, "nothing buffered may be dropped");
        Pin::new(&mut reader).consume(36);
        reader.set_capacity(8);
        assert_eq!(reader.buffer(), b"yyyy");
    }
}
