//! A rumqttc client driven by a background task ([`Client`]).

use super::*;

#[allow(unused_imports)]
pub use rumqttc::{
    ConnAck, ConnectReturnCode, Event, Incoming, LastWill, MqttOptions, Outgoing, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode,
};

/// A rumqttc client whose event loop runs on a tokio task that stops at the
/// first error, so one `Client` is one network connection (rumqttc would
/// otherwise reconnect). Publishes seen while waiting for something else
/// are kept for [`Client::recv`].
pub struct Client {
    pub client: rumqttc::AsyncClient,
    events: tokio::sync::mpsc::UnboundedReceiver<Result<Event, String>>,
    pump: tokio::task::JoinHandle<()>,
    backlog: VecDeque<Publish>,
    closed: Option<String>,
    name: String,
}

/// rumqttc options for `client_id` on the broker at `addr`: keep-alive 30 s,
/// packets up to 4 MiB.
pub fn options(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(4 << 20, 4 << 20);
    options
}

impl Client {
    /// Connects with a clean session; fails the test unless accepted.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Client {
        Client::connect_opts(options(addr, client_id)).await.0
    }

    /// Connects with `clean_session` set as given; returns the CONNACK.
    pub async fn connect_session(
        addr: SocketAddr,
        client_id: &str,
        clean: bool,
    ) -> (Client, ConnAck) {
        let mut options = options(addr, client_id);
        options.set_clean_session(clean);
        Client::connect_opts(options).await
    }

    /// Connects with these options; fails the test unless accepted.
    pub async fn connect_opts(options: MqttOptions) -> (Client, ConnAck) {
        let name = options.client_id();
        match Client::try_connect(options).await {
            Ok(connected) => connected,
            Err(error) => panic!("client {name:?} could not connect: {error}"),
        }
    }

    /// Connects with these options; the error is what rumqttc reported
    /// (a refusal is `ConnectionError::ConnectionRefused(code)`).
    pub async fn try_connect(
        options: MqttOptions,
    ) -> Result<(Client, ConnAck), Box<rumqttc::ConnectionError>> {
        let name = options.client_id();
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 1024);
        let Ok(first) = tokio::time::timeout(WAIT, eventloop.poll()).await else {
            panic!("client {name:?}: no CONNACK within {WAIT:?}");
        };
        let first = first.map_err(Box::new)?;
        let Event::Incoming(Incoming::ConnAck(connack)) = first else {
            panic!("client {name:?}: expected CONNACK first, got {first:?}");
        };
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(event) => {
                        if tx.send(Ok(event)).is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        let _ = tx.send(Err(error.to_string()));
                        return;
                    }
                }
            }
        });
        Ok((
            Client {
                client,
                events,
                pump,
                backlog: VecDeque::new(),
                closed: None,
                name,
            },
            connack,
        ))
    }

    /// The next event within `timeout`; `None` when nothing came. A closed
    /// connection is reported as `Some(Err(..))` once, then `None`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Result<Event, String>> {
        if self.closed.is_some() {
            return None;
        }
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Ok(Some(Err(error))) => {
                self.closed = Some(error.clone());
                Some(Err(error))
            }
            Ok(Some(event)) => Some(event),
            Ok(None) => {
                self.closed = Some("event loop ended".into());
                Some(Err("event loop ended".into()))
            }
            Err(_) => None,
        }
    }

    /// The next event, waiting as long as it takes (cancel-safe, for
    /// `tokio::select!`). A closed connection is `Err`.
    pub async fn next_event_forever(&mut self) -> Result<Event, String> {
        if let Some(reason) = &self.closed {
            return Err(reason.clone());
        }
        match self.events.recv().await {
            Some(Ok(event)) => Ok(event),
            Some(Err(error)) => {
                self.closed = Some(error.clone());
                Err(error)
            }
            None => {
                self.closed = Some("event loop ended".into());
                Err("event loop ended".into())
            }
        }
    }

    /// Waits for the first event that `pick` accepts, keeping the
    /// publishes it passes over. Fails the test on timeout or close.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Ok(event)) => {
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                    if let Event::Incoming(Incoming::Publish(publish)) = event {
                        self.backlog.push_back(publish);
                    }
                }
                Some(Err(error)) => panic!(
                    "{}: connection closed ({error}) while waiting for {what}",
                    self.name
                ),
                None => panic!("{}: timed out waiting for {what}", self.name),
            }
        }
    }

    /// Subscribes to one filter and returns the SUBACK's return code.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubscribeReasonCode {
        let codes = self.subscribe_many(&[(filter, qos)]).await;
        codes[0]
    }

    /// Subscribes to several filters in one SUBSCRIBE; returns the codes.
    pub async fn subscribe_many(&mut self, filters: &[(&str, QoS)]) -> Vec<SubscribeReasonCode> {
        let filters = filters
            .iter()
            .map(|(path, qos)| SubscribeFilter::new((*path).to_owned(), *qos));
        self.client.subscribe_many(filters).await.unwrap();
        self.wait_for("SUBACK", |event| match event {
            Event::Incoming(Incoming::SubAck(suback)) => Some(suback.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes and waits until it is done: written (QoS 0), PUBACK
    /// (QoS 1) or PUBCOMP (QoS 2).
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .unwrap();
        let pkid = self
            .wait_for("our PUBLISH to leave", |event| match event {
                Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
                _ => None,
            })
            .await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |event| match event {
                    Event::Incoming(Incoming::PubAck(ack)) if ack.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
            }
            QoS::ExactlyOnce => {
                self.wait_for("PUBCOMP", |event| match event {
                    Event::Incoming(Incoming::PubComp(comp)) if comp.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
            }
        }
    }

    /// The next application message; fails the test if none comes.
    pub async fn recv(&mut self) -> Publish {
        if let Some(publish) = self.backlog.pop_front() {
            return publish;
        }
        self.wait_for("a PUBLISH", |event| match event {
            Event::Incoming(Incoming::Publish(publish)) => Some(publish.clone()),
            _ => None,
        })
        .await
    }

    /// Fails the test if a message arrives within `within`.
    pub async fn expect_no_message(&mut self, within: Duration) {
        if let Some(publish) = self.backlog.pop_front() {
            panic!("{}: unexpected message {publish:?}", self.name);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_event(left).await {
                Some(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                    panic!("{}: unexpected message {publish:?}", self.name)
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => panic!("{}: connection closed ({error})", self.name),
                None => return,
            }
        }
    }

    /// Waits until the broker closes the connection; returns rumqttc's error.
    pub async fn expect_closed(&mut self) -> String {
        if let Some(reason) = &self.closed {
            return reason.clone();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                    self.backlog.push_back(publish)
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return error,
                None => panic!("{}: the broker did not close the connection", self.name),
            }
        }
    }

    /// Sends DISCONNECT and waits until the broker has closed the connection,
    /// which it does after detaching the session.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.unwrap();
        self.expect_closed().await;
    }

    /// Drops the connection without DISCONNECT (the socket is closed).
    pub fn kill(self) {
        self.pump.abort();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.pump.abort();
    }
}
