//! MQTT over WebSocket: the server side of the upgrade, and a byte stream
//! over binary messages for the MQTT codec.
//!
//! The upgrade ([`accept`]) checks the path (404 otherwise) and requires one
//! of the MQTT subprotocols (`mqtt`, `mqttv3.1`, `mqttv3.1.1`; 400
//! otherwise), echoing the one chosen. [`WsStream`] then reads the payloads
//! of binary messages as one byte stream, so an MQTT packet may span
//! messages and a message may hold several packets. Pings are answered,
//! pongs ignored, a close frame ends the stream (after the close reply),
//! and a text message closes the connection with status 1003: MQTT over
//! WebSocket is binary only.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::{Sink, Stream};

/// The subprotocols accepted, as the original broker did.
pub const SUBPROTOCOLS: [&str; 3] = ["mqtt", "mqttv3.1", "mqttv3.1.1"];

/// The smallest message size limit, whatever `max-packet-size` says, so a
/// message may carry a few small packets.
pub const MIN_MESSAGE_LIMIT: usize = 64 * 1024;

/// What tungstenite reads from the socket at once; small, so that many idle
/// connections cost little (its buffer grows for a large frame).
const READ_BUFFER: usize = 4 * 1024;

/// How the WebSocket listener upgrades connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSettings {
    /// The only path served (`/websocket`).
    pub path: String,
    /// The largest frame and message accepted, in bytes: see
    /// [`WsSettings::new`].
    pub max_message_size: usize,
}

impl WsSettings {
    /// Settings for `path`, with messages limited to `max_packet_size`
    /// (the MQTT limit: a larger message can only be a packet that the
    /// codec would refuse, or many packets at once), but at least
    /// [`MIN_MESSAGE_LIMIT`].
    pub fn new(path: impl Into<String>, max_packet_size: usize) -> WsSettings {
        WsSettings {
            path: path.into(),
            max_message_size: max_packet_size.max(MIN_MESSAGE_LIMIT),
        }
    }

    fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            // Each write of the driver (a batch of packets) leaves as one
            // frame, at once; the next write waits until it has gone.
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }
}

/// Why an upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum WsAcceptError {
    /// The request was for another path; answered 404.
    #[error("WebSocket request for path {0:?} refused with 404")]
    WrongPath(String),
    /// No MQTT subprotocol was offered; answered 400.
    #[error("WebSocket request without an MQTT subprotocol refused with 400 (offered: {0:?})")]
    NoSubprotocol(String),
    /// Not a WebSocket handshake, or the connection failed during it.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(#[source] WsError),
}

/// The subprotocol to answer with: the first of the client's list that we
/// accept. `None` when it offered none of [`SUBPROTOCOLS`].
pub fn choose_subprotocol<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    offered
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find_map(|token| SUBPROTOCOLS.iter().copied().find(|p| *p == token))
}

fn refusal(status: StatusCode, text: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(format!("{text}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len() + 1));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Runs the server side of the WebSocket upgrade on `stream`. Not bounded
/// in time: the caller adds its timeout.
pub async fn accept<S>(stream: S, settings: &WsSettings) -> Result<WsStream<S>, WsAcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut refused = None;
    // The error type is tungstenite's (an HTTP response).
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        let path = request.uri().path();
        if path != settings.path {
            tracing::debug!(path, expected = %settings.path, "WebSocket upgrade refused: wrong path (404)");
            refused = Some(WsAcceptError::WrongPath(path.to_owned()));
            return Err(refusal(StatusCode::NOT_FOUND, "not found"));
        }
        let offered: Vec<&str> = request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        let Some(chosen) = choose_subprotocol(offered.iter().copied()) else {
            let offered = offered.join(", ");
            tracing::debug!(
                offered,
                "WebSocket upgrade refused: no MQTT subprotocol (mqtt, mqttv3.1, mqttv3.1.1) offered (400)"
            );
            refused = Some(WsAcceptError::NoSubprotocol(offered));
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Protocol must offer mqtt, mqttv3.1 or mqttv3.1.1",
            ));
        };
        tracing::trace!(subprotocol = chosen, "WebSocket upgrade accepted");
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(chosen),
        );
        Ok(response)
    };
    let result =
        async_tungstenite::accept_hdr_async_with_config(stream, callback, Some(settings.config()))
            .await;
    match result {
        Ok(inner) => Ok(WsStream::new(inner)),
        Err(err) => Err(refused.unwrap_or(WsAcceptError::Handshake(err))),
    }
}

/// A WebSocket connection as a byte stream: reads return the payloads of
/// binary messages, each write leaves as one binary message.
///
/// Memory: it holds at most one received message (limited by
/// [`WsSettings::max_message_size`]) and one message being sent; a write
/// waits until the previous one has reached the socket.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// What is left of the binary message being read.
    pending: Bytes,
    /// Set once the peer closed (or reading failed): reads return 0.
    read_done: bool,
    /// The close frame to send when closing, for a violation.
    close_with: Option<CloseFrame>,
}

impl<S> WsStream<S> {
    fn new(inner: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            inner,
            pending: Bytes::new(),
            read_done: false,
            close_with: None,
        }
    }

    /// The underlying stream (the TCP or TLS stream).
    pub fn get_ref(&self) -> &S
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.inner.get_ref()
    }
}

fn io_error(err: WsError) -> io::Error {
    match err {
        WsError::Io(err) => err,
        other => io::Error::other(other),
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.len());
                buf[..n].copy_from_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(n));
            }
            if this.read_done {
                return Poll::Ready(Ok(0));
            }
            // Reading also sends the pong of a ping and the reply to a
            // close, which tungstenite queues.
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.read_done = true;
                }
                Poll::Ready(Some(Ok(Message::Binary(data)))) => this.pending = data,
                Poll::Ready(Some(Ok(Message::Text(_)))) => {
                    tracing::debug!("text WebSocket message: closing (MQTT needs binary frames)");
                    this.read_done = true;
                    this.close_with = Some(CloseFrame {
                        code: CloseCode::Unsupported,
                        reason: "MQTT over WebSocket needs binary frames".into(),
                    });
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message",
                    )));
                }
                // The peer's close: the reply goes out on the next poll,
                // which then ends the stream.
                Poll::Ready(Some(Ok(
                    Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_),
                ))) => {}
                Poll::Ready(Some(Err(err))) => {
                    this.read_done = true;
                    if let WsError::Capacity(_) = &err {
                        this.close_with = Some(CloseFrame {
                            code: CloseCode::Size,
                            reason: "message too big".into(),
                        });
                    }
                    return Poll::Ready(Err(io_error(err)));
                }
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut inner = Pin::new(&mut self.get_mut().inner);
        // Ready once the previous message has reached the socket.
        match inner.as_mut().poll_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(err)) => return Poll::Ready(Err(io_error(err))),
            Poll::Ready(Ok(())) => {}
        }
        inner
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_flush(cx)
            .map_err(io_error)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut inner = Pin::new(&mut this.inner);
        if let Some(frame) = this.close_with.take() {
            // Queues the close frame with its status; closing flushes it.
            let _ = inner.as_mut().start_send(Message::Close(Some(frame)));
        }
        inner.poll_close(cx).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocols_are_chosen_in_the_clients_order() {
        assert_eq!(choose_subprotocol(["mqtt"]), Some("mqtt"));
        assert_eq!(
            choose_subprotocol(["chat, mqttv3.1.1, mqtt"]),
            Some("mqttv3.1.1")
        );
        assert_eq!(choose_subprotocol(["chat", "mqttv3.1"]), Some("mqttv3.1"));
        assert_eq!(choose_subprotocol(["MQTT"]), None);
        assert_eq!(choose_subprotocol(["chat"]), None);
        assert_eq!(choose_subprotocol([]), None);
    }

    #[test]
    fn message_limit_follows_the_packet_limit() {
        assert_eq!(WsSettings::new("/ws", 1 << 20).max_message_size, 1 << 20);
        assert_eq!(
            WsSettings::new("/ws", 100).max_message_size,
            MIN_MESSAGE_LIMIT
        );
    }
}
