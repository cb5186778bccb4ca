//! One MQTT client connection on the core codec: a reused read buffer that
//! packets are decoded from without copies, and a write buffer that collects
//! packets until [`Client::flush`] sends them in one write.

use std::cell::RefCell;
use std::future::Future;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use async_io::{Async, Timer};
use async_net::TcpStream;
use bytes::BytesMut;
use easy_mqtt_core::codec::{Decoded, decode, encode};
use easy_mqtt_core::packet::{
    ByteStr, Connect, ConnectReturnCode, Packet, PacketId, ProtocolVersion, QoS, Subscribe,
    SubscribeFilter, SubscribeReturnCode,
};
use futures_lite::{AsyncRead, AsyncWriteExt, FutureExt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Context, Error, Result};

/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 1 << 20;
/// Bytes read from the socket at most per read.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// Where each read lands before its bytes are appended to the client's
    /// read buffer (one per executor thread, not one per client).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// What [`Client::fill_or`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    Data(usize),
    Eof,
    Timer,
}
/// `EINPROGRESS` on Linux: a non-blocking connect under way.
const EINPROGRESS: i32 = 115;

/// Runs `future` for at most `limit`; `what` names it in the timeout error.
pub async fn timeout<T>(
    limit: Duration,
    what: impl std::fmt::Display,
    future: impl Future<Output = Result<T>>,
) -> Result<T> {
    let what = what.to_string();
    future
        .or(async move {
            Timer::after(limit).await;
            Err(Error::new(format!("{what}: timed out after {limit:?}")))
        })
        .await
}

/// A TCP connection to `target` from `source` (port chosen by the kernel).
///
/// Binding each client to one of several loopback source addresses gives
/// every address its own ephemeral port range, so that 20,000 connections
/// (and the TIME_WAIT sockets of the previous run) do not exhaust it.
pub async fn connect_tcp(target: SocketAddr, source: Ipv4Addr) -> Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .context("cannot create a socket")?;
    socket
        .set_reuse_address(true)
        .context("cannot set SO_REUSEADDR")?;
    socket
        .bind(&SocketAddr::new(source.into(), 0).into())
        .with_source(source)?;
    socket
        .set_nonblocking(true)
        .context("cannot make the socket non-blocking")?;
    socket
        .set_tcp_nodelay(true)
        .context("cannot set TCP_NODELAY")?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) || e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => {
            return Err(Error::new(format!(
                "connect to {target} from {source}: {e}"
            )));
        }
    }
    let stream = Async::new(std::net::TcpStream::from(socket))
        .context("cannot register the socket with the reactor")?;
    stream
        .writable()
        .await
        .context(format!("connect to {target} from {source}"))?;
    if let Some(e) = stream
        .get_ref()
        .take_error()
        .context("cannot read the socket error")?
    {
        return Err(Error::new(format!(
            "connect to {target} from {source}: {e}"
        )));
    }
    Ok(TcpStream::from(stream))
}

trait WithSource<T> {
    fn with_source(self, source: Ipv4Addr) -> Result<T>;
}

impl<T> WithSource<T> for std::io::Result<T> {
    fn with_source(self, source: Ipv4Addr) -> Result<T> {
        self.map_err(|e| Error::new(format!("cannot bind a client socket to {source}: {e}")))
    }
}

pub struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Client {
    pub fn new(stream: TcpStream) -> Client {
        Client {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
        }
    }

    /// Another handle on the socket, for shutting it down from outside.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Appends `packet` to the write buffer.
    pub fn queue(&mut self, packet: &Packet) -> Result<()> {
        encode(packet, &mut self.wbuf).context(format!("cannot encode {}", packet.name()))
    }

    pub fn has_queued(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.wbuf).await;
        self.wbuf.clear();
        result.context("write to the broker")
    }

    /// The next whole packet already in the read buffer.
    pub fn next_packet(&mut self) -> Result<Option<Packet>> {
        match decode(&mut self.rbuf, MAX_PACKET).context("bad packet from the broker")? {
            Decoded::Packet(packet) => Ok(Some(packet)),
            Decoded::Incomplete { .. } => Ok(None),
        }
    }

    /// Reads once into the read buffer; `Ok(0)` at end of stream.
    pub async fn fill(&mut self) -> Result<usize> {
        match self.fill_or(None).await? {
            Fill::Data(n) => Ok(n),
            Fill::Eof | Fill::Timer => Ok(0),
        }
    }

    /// Reads once into the read buffer, or returns [`Fill::Timer`] when
    /// nothing is readable and `timer` has fired. Cancel-safe: bytes are only ever appended
    /// within one poll, from a per-thread scratch buffer, so dropping the
    /// future loses nothing and the read buffer holds exactly the bytes
    /// received (an idle client holds no buffer at all).
    pub async fn fill_or(&mut self, mut timer: Option<Timer>) -> Result<Fill> {
        let Client { stream, rbuf, .. } = self;
        let result = futures_lite::future::poll_fn(|cx| {
            let read = SCRATCH.with_borrow_mut(|scratch| {
                match Pin::new(&mut *stream).poll_read(cx, scratch) {
                    Poll::Ready(Ok(0)) => Poll::Ready(Ok(Fill::Eof)),
                    Poll::Ready(Ok(n)) => {
                        rbuf.extend_from_slice(scratch.get(..n).unwrap_or_default());
                        Poll::Ready(Ok(Fill::Data(n)))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            });
            if read.is_pending()
                && let Some(timer) = timer.as_mut()
                && Pin::new(timer).poll(cx).is_ready()
            {
                return Poll::Ready(Ok(Fill::Timer));
            }
            read
        })
        .await;
        result.context("read from the broker")
    }

    /// The next packet, reading as needed; `None` at end of stream.
    pub async fn recv(&mut self) -> Result<Option<Packet>> {
        loop {
            if let Some(packet) = self.next_packet()? {
                return Ok(Some(packet));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Lets go of the read buffer (an idle client holds no memory for it).
    pub fn shrink(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        self.wbuf = BytesMut::new();
    }

    /// CONNECT (MQTT 3.1.1, clean session as given) and its CONNACK.
    pub async fn handshake(
        &mut self,
        client_id: &str,
        keep_alive: u16,
        clean_session: bool,
    ) -> Result<()> {
        self.queue(&Packet::Connect(Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_session,
            keep_alive,
            client_id: ByteStr::from(client_id),
            will: None,
            username: None,
            password: None,
        }))?;
        self.flush().await?;
        match self.recv().await? {
            Some(Packet::ConnAck(connack)) if connack.code == ConnectReturnCode::Accepted => Ok(()),
            Some(Packet::ConnAck(connack)) => Err(Error::new(format!(
                "CONNACK refused the connection: {}",
                connack.code
            ))),
            Some(other) => Err(Error::new(format!(
                "expected CONNACK, got {}",
                other.name()
            ))),
            None => Err(Error::new("broker closed the connection before CONNACK")),
        }
    }

    /// SUBSCRIBE to one filter and wait for its SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<QoS> {
        let packet_id = PacketId::MIN;
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![SubscribeFilter {
                filter: ByteStr::from(filter),
                qos,
            }],
        }))?;
        self.flush().await?;
        match self.recv().await? {
            Some(Packet::SubAck(suback)) if suback.packet_id == packet_id => {
                match suback.return_codes.first() {
                    Some(SubscribeReturnCode::Granted(granted)) => Ok(*granted),
                    _ => Err(Error::new(format!("SUBACK refused the filter {filter}"))),
                }
            }
            Some(other) => Err(Error::new(format!("expected SUBACK, got {}", other.name()))),
            None => Err(Error::new("broker closed the connection before SUBACK")),
        }
    }

    /// DISCONNECT, best effort, then close.
    pub async fn disconnect(mut self) {
        self.wbuf.clear();
        if self.queue(&Packet::Disconnect).is_ok() {
            let _ = timeout(Duration::from_secs(1), "DISCONNECT", self.flush()).await;
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
