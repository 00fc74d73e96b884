//! The socket under tungstenite, wrapped so that an idle connection holds
//! no read or write buffer.
//!
//! Why a wrapper: tungstenite (0.30) keeps two buffers per socket for the
//! life of the connection. Its read buffer is allocated up front at
//! `read_buffer_size` and reads into it at most that much per `read` call;
//! its write buffer is a `Vec` that gathers frames up to
//! `write_buffer_size` and keeps its capacity after every flush (after one
//! burst to a subscriber, 16 KiB or more stay with that connection for
//! good). Neither can be shrunk from outside, and tungstenite has no option
//! to allocate them only while in use. Rather than patching the library, the
//! node configures it small and does the buffering here, where it can be
//! released:
//!
//! - **Reads.** tungstenite is configured with a tiny read buffer
//!   ([`TUNGSTENITE_READ_BUFFER`]) and asks for at most that much per call.
//!   Each call that finds nothing pending here reads the socket once into a
//!   [`READ_CHUNK`] array *on the stack of that call* (so it costs an idle
//!   connection nothing), hands tungstenite what it asked for, and keeps the
//!   rest in `unread`, an exact-size heap copy that is freed as soon as
//!   tungstenite has taken it. A socket read still takes up to 4 KiB at a
//!   time (the node used to read 1 KiB per system call); the extra small
//!   calls tungstenite makes for a long frame are copies from memory, not
//!   system calls. A frame of any size up to `max_frame_bytes` arrives
//!   intact; tungstenite's own buffer still grows to the longest frame the
//!   client has sent (it reserves the whole frame) and is the one buffer
//!   this wrapper cannot give back.
//! - **Writes.** tungstenite is configured with `write_buffer_size = 0`, so
//!   it hands every frame to [`AsyncWrite::poll_write`] at once; the frames
//!   are gathered in `unwritten` and written to the socket when
//!   [`WRITE_BATCH`] bytes are pending or on `flush`, as tungstenite itself
//!   did with a 16 KiB write buffer, so the number of system calls per
//!   batch is unchanged. After a flush has written everything, the buffer
//!   is released. tungstenite's own out buffer then only ever holds one
//!   frame at a time.
//!
//! The cost is one more copy of every byte (socket → stack → tungstenite on
//! reads, tungstenite → here on writes) and one allocation per batch of
//! outgoing frames; both are small beside the system call each batch makes.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What tungstenite is configured to read per call (`read_buffer_size`), and
/// the buffer it allocates up front: enough for the header and payload of
/// the usual client frame (subscribe, publish, ping) in one call.
pub(crate) const TUNGSTENITE_READ_BUFFER: usize = 128;

/// Most bytes read from the socket in one system call.
pub(crate) const READ_CHUNK: usize = 4096;

/// Pending outgoing bytes at which a write goes to the socket without
/// waiting for the flush: what tungstenite's `write_buffer_size` did before.
pub(crate) const WRITE_BATCH: usize = 16 * 1024;

/// A socket whose read-ahead and write batch live on the heap only while
/// they hold bytes. See the module documentation for why.
#[derive(Debug)]
pub struct LeanIo<S> {
    /// The socket.
    io: S,
    /// Bytes read from the socket that tungstenite has not asked for yet,
    /// from `unread_at` on. Empty, with no allocation, between reads.
    unread: Vec<u8>,
    unread_at: usize,
    /// Frames written by tungstenite and not yet by the socket, from
    /// `written_at` on. Empty, with no allocation, after a flush.
    unwritten: Vec<u8>,
    written_at: usize,
}

impl<S> LeanIo<S> {
    /// Wraps `io`; nothing is allocated.
    pub fn new(io: S) -> Self {
        Self {
            io,
            unread: Vec::new(),
            unread_at: 0,
            unwritten: Vec::new(),
            written_at: 0,
        }
    }

    /// Heap bytes this wrapper holds now (its two buffers' capacities).
    pub fn held_bytes(&self) -> usize {
        self.unread.capacity() + self.unwritten.capacity()
    }

    /// Moves read-ahead bytes into `buf`; frees them once all are taken.
    fn take_unread(&mut self, buf: &mut ReadBuf<'_>) {
        let pending = &self.unread[self.unread_at..];
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        self.unread_at += n;
        if self.unread_at == self.unread.len() {
            self.unread = Vec::new();
            self.unread_at = 0;
        }
    }
}

impl<S: AsyncWrite + Unpin> LeanIo<S> {
    /// Writes every pending byte to the socket, then frees the buffer.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written_at < self.unwritten.len() {
            let n =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.unwritten[self.written_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written_at += n;
        }
        self.unwritten = Vec::new();
        self.written_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LeanIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            // Nothing can be handed over: reading the socket now would
            // only move bytes into `unread` and look like an end of stream.
            return Poll::Ready(Ok(()));
        }
        if this.unread_at < this.unread.len() {
            this.take_unread(buf);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_CHUNK {
            // A large window (not tungstenite's, but any other reader's,
            // e.g. the close linger): read straight into it.
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        // On the stack of this call: held only while it runs.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut chunk = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut chunk))?;
        let got = chunk.filled();
        let n = got.len().min(buf.remaining());
        buf.put_slice(&got[..n]);
        if n < got.len() {
            this.unread = got[n..].to_vec();
            this.unread_at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LeanIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.unwritten.len() - this.written_at >= WRITE_BATCH {
            ready!(this.poll_write_out(cx))?;
        }
        if this.written_at > 0 {
            // The socket took part of the batch: keep only the rest, so that
            // a peer that reads slowly cannot make this buffer grow.
            this.unwritten.drain(..this.written_at);
            this.written_at = 0;
        }
        this.unwritten.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    use super::*;

    fn config(max_frame: usize) -> WebSocketConfig {
        let mut c = WebSocketConfig::default();
        c.read_buffer_size = TUNGSTENITE_READ_BUFFER;
        c.write_buffer_size = 0;
        c.max_message_size = Some(max_frame);
        c.max_frame_size = Some(max_frame);
        c
    }

    /// A server stream over the wrapper, as the node builds it, and a plain
    /// client over the other end of an in-memory socket.
    async fn pair(
        max_frame: usize,
    ) -> (
        WebSocketStream<LeanIo<DuplexStream>>,
        WebSocketStream<DuplexStream>,
    ) {
        let (server, client) = tokio::io::duplex(256 * 1024);
        let server = WebSocketStream::from_raw_socket(
            LeanIo::new(server),
            Role::Server,
            Some(config(max_frame)),
        )
        .await;
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (server, client)
    }

    #[tokio::test]
    async fn a_frame_much_larger_than_the_small_buffers_arrives_intact() {
        let (mut server, mut client) = pair(64 * 1024).await;
        let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        client
            .send(Message::Binary(big.clone().into()))
            .await
            .unwrap();
        client.send(Message::Text("after".into())).await.unwrap();
        match server.next().await {
            Some(Ok(Message::Binary(got))) => assert_eq!(got.as_ref(), &big[..]),
            other => panic!("expected the big frame, got {other:?}"),
        }
        match server.next().await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "after"),
            other => panic!("expected the next frame, got {other:?}"),
        }
        assert_eq!(server.get_ref().held_bytes(), 0, "read-ahead released");
    }

    #[tokio::test]
    async fn many_small_frames_in_one_read_all_arrive_in_order() {
        let (mut server, mut client) = pair(1024).await;
        for i in 0..200 {
            client
                .feed(Message::Text(format!("frame {i}").into()))
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        for i in 0..200 {
            match server.next().await {
                Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("frame {i}")),
                other => panic!("frame {i}: got {other:?}"),
            }
        }
        assert_eq!(server.get_ref().held_bytes(), 0);
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_still_refused() {
        let (mut server, mut client) = pair(1000).await;
        client
            .send(Message::Binary(vec![7u8; 1001].into()))
            .await
            .unwrap();
        match server.next().await {
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {}
            other => panic!("expected a capacity error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn writes_are_batched_until_the_flush_and_the_buffer_is_released_after_it() {
        let (mut server, mut client) = pair(1024).await;
        for i in 0..50 {
            server
                .feed(Message::Text(format!("m{i}").into()))
                .await
                .unwrap();
        }
        assert!(
            server.get_ref().held_bytes() > 0,
            "gathered, not yet written"
        );
        server.flush().await.unwrap();
        assert_eq!(server.get_ref().held_bytes(), 0, "released after the flush");
        for i in 0..50 {
            match client.next().await {
                Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("m{i}")),
                other => panic!("m{i}: got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn small_reads_take_what_was_read_ahead_in_order_then_release_it() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut io = LeanIo::new(a);
        let sent: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
        b.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 7];
        while got.len() < sent.len() {
            let n = io.read(&mut small).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(io.held_bytes(), 0);
        // A zero-length read reads nothing from the socket.
        b.write_all(b"later").await.unwrap();
        assert_eq!(io.read(&mut []).await.unwrap(), 0);
        assert_eq!(io.held_bytes(), 0);
        let mut rest = [0u8; 5];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"later");
    }

    #[tokio::test]
    async fn a_full_batch_goes_out_before_the_flush() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut io = LeanIo::new(a);
        let chunk = vec![1u8; 1000];
        for _ in 0..(WRITE_BATCH / 1000 + 2) {
            io.write_all(&chunk).await.unwrap();
        }
        // More than a batch was written without a flush: the first batch is
        // already on the socket.
        let mut got = vec![0u8; WRITE_BATCH];
        tokio::time::timeout(std::time::Duration::from_secs(1), b.read_exact(&mut got))
            .await
            .expect("a full batch was held back until the flush")
            .unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.held_bytes(), 0);
        // And the flush sends the rest.
        let total = (WRITE_BATCH / 1000 + 2) * 1000;
        let mut rest = vec![0u8; total - WRITE_BATCH];
        tokio::time::timeout(std::time::Duration::from_secs(1), b.read_exact(&mut rest))
            .await
            .expect("the flush did not send the rest")
            .unwrap();
    }
}
