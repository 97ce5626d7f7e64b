//! A client connection with what was read of it and not yet served in front, and the send
//! timeout on its writes: the connection as hyper's server gets it from downstream.rs, and as
//! forward.rs gets it back after an upgrade (a restart parks its socket, park.rs).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::metrics::Faults;

/// The client connection with what was read of it and not yet served in front, so that
/// hyper's server starts from the request downstream.rs handed over, and with the send
/// timeout on its writes (hyper's server has none). By hand: hyper's own (`Rewind`) is
/// private, and tokio's `chain` reads only.
pub(super) struct Prefixed {
    read: BytesMut,
    stream: TcpStream,
    send: Duration,
    /// Armed while a write waits for the client to take bytes.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    faults: Arc<Faults>,
}

impl Prefixed {
    pub(super) fn new(
        read: BytesMut,
        stream: TcpStream,
        send: Duration,
        faults: Arc<Faults>,
    ) -> Prefixed {
        Prefixed {
            read,
            stream,
            send,
            stalled: None,
            faults,
        }
    }

    /// The socket, and what was read of it and not yet taken.
    pub(super) fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.read)
    }

    /// A write's outcome, with the send timeout: ready clears the timer; pending arms it, and
    /// once it passes the write fails (hyper's server then closes the connection).
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let send = self.send;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
        if timer.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            self.faults.client_write.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took no response bytes for {} s", send.as_secs()),
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.timed(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
