//! The CONNECT phase of a connection: authentication, loading a stored
//! session, and accepting it with the node.

use super::*;

/// A CONNECT waiting for the authenticator's answer.
pub(super) type PendingAuth = (
    Box<Connect>,
    Pin<Box<dyn Future<Output = AuthDecision> + Send>>,
);

/// A CONNECT waiting for storage: its stored session loaded (or deleted),
/// and in a cluster its client id claimed.
pub(super) type PendingConnect = (
    Box<Connect>,
    BoxFuture<'static, Result<Prepared, StorageError>>,
);

/// What a CONNECT prepared before it is accepted.
pub(super) struct Prepared {
    /// What storage held (`None`: nothing was loaded, the node's own state
    /// is the newest).
    loaded: Option<Option<StoredSession>>,
    /// The cluster epoch of the claim.
    epoch: Option<u64>,
    /// The loaded subscriptions' routes, kept from a prune until
    /// `accept` put the subscriptions in the trie.
    routes: crate::cluster::RoutePin,
    /// The CONNECT waited for the connection it takes over to store its
    /// writes and let go (see `Node::takeover_wait`): it starts again.
    restart: bool,
}

impl<S, R> Driver<S, R>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    R: Runtime,
{
    pub(super) fn accept(&mut self, connect: Connect, loaded: Option<Option<StoredSession>>) {
        let policy = self.node.policy().cloned();
        let copy = policy.as_ref().map(|_| connect.clone());
        let client_id = connect.client_id.clone();
        let Some(attachment) = self
            .node
            .connect_loaded(&self.cell, connect, &self.info, loaded)
        else {
            // Refused after its claim: the session is held here all the
            // same, as for any CONNECT that ends before it is accepted.
            self.node.connect_abandoned(&client_id);
            return;
        };
        // The connection's span is the current one (see `Serve::poll`).
        tracing::Span::current().record(
            "client_id",
            tracing::field::display(&attachment.entry.client_id),
        );
        if let (Some(policy), Some(connect)) = (policy, copy) {
            policy.on_connected(&self.ctx(&attachment), &connect, &self.info);
        }
        self.attachment = Some(attachment);
    }

    pub(super) fn ctx<'a>(&self, attachment: &'a Attachment) -> ClientCtx<'a> {
        ClientCtx {
            client_id: &attachment.entry.client_id,
            connection_id: self.cell.id,
        }
    }

    /// Whether the node's policy, if any, lets this client publish this.
    pub(super) fn policy_allows(&self, publish: &easy_mqtt_core::packet::Publish) -> bool {
        match (self.node.policy(), &self.attachment) {
            (Some(policy), Some(attachment)) => {
                policy.authorize_publish(&self.ctx(attachment), publish)
            }
            _ => true,
        }
    }

    pub(super) fn auth_request(&self, connect: &Connect) -> AuthRequest {
        AuthRequest {
            username: connect.username.as_ref().map(|u| u.as_str().to_owned()),
            password: connect.password.clone(),
            client_id: connect.client_id.as_str().to_owned(),
            remote_address: self.info.peer,
            protocol: connect.protocol,
            transport: self.info.transport,
            client_cert_cn: self.info.client_cert_cn.as_deref().map(str::to_owned),
        }
    }

    /// Polls the pending authentication, if any, and applies its answer.
    /// True when it did (the state machine has work then).
    pub(super) fn poll_auth(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(pending) = &mut self.pending_auth else {
            return false;
        };
        let (_, decision) = &mut **pending;
        if self.closed {
            // Closed meanwhile (peer gone, shutdown): nobody waits for the answer.
            self.pending_auth = None;
            return false;
        }
        let Poll::Ready(decision) = decision.as_mut().poll(cx) else {
            return false;
        };
        let Some(pending) = self.pending_auth.take() else {
            return false;
        };
        let (connect, _) = *pending;
        let metrics = &self.node.metrics;
        match decision {
            AuthDecision::Accept => {
                Metrics::inc(&metrics.auth_accepted);
                self.start_connect(connect);
            }
            AuthDecision::Refuse(code) => {
                let code = if code == ConnectReturnCode::Accepted {
                    ConnectReturnCode::NotAuthorized
                } else {
                    code
                };
                if code == ConnectReturnCode::ServerUnavailable {
                    Metrics::inc(&metrics.auth_unavailable);
                } else {
                    Metrics::inc(&metrics.auth_refused);
                }
                let now = self.node.runtime().now();
                lock(&self.cell.inner).conn.refuse(code, now);
            }
        }
        true
    }

    /// Accepts a CONNECT, or first loads (persistent) or deletes (clean)
    /// its stored session on a durable node, and in a cluster claims its
    /// client id; the CONNACK waits for that.
    pub(super) fn start_connect(&mut self, connect: Box<Connect>) {
        if let Some(wait) = self.node.takeover_wait(&connect.client_id, &self.cell) {
            let future: BoxFuture<'static, _> = Box::pin(async move {
                wait.await;
                Ok(Prepared {
                    loaded: None,
                    epoch: None,
                    routes: crate::cluster::RoutePin::default(),
                    restart: true,
                })
            });
            self.pending_connect = Some(Box::new((connect, future)));
            return;
        }
        let claim = self.node.cluster().is_some() && !connect.client_id.is_empty();
        let plan = match self
            .node
            .connect_plan(&connect.client_id, connect.clean_session)
        {
            // Another node may have held the session: storage decides.
            ConnectPlan::Direct if claim && connect.clean_session => ConnectPlan::Delete,
            plan => plan,
        };
        let storage_step: Option<BoxFuture<'static, Result<Option<StoredSession>, StorageError>>> =
            match plan {
                ConnectPlan::Direct => None,
                ConnectPlan::Load => Some(self.node.load_for_connect(connect.client_id.clone())),
                ConnectPlan::Delete => {
                    let storage = self.node.storage().clone();
                    let client_id = connect.client_id.clone();
                    Some(Box::pin(async move {
                        let mut ops = vec![Op::DeleteSession {
                            client_id: client_id.clone(),
                        }];
                        if claim {
                            ops.push(crate::cluster::forget_received(&client_id));
                        }
                        storage.apply(ops).await?;
                        Ok(None)
                    }))
                }
            };
        if !claim {
            match storage_step {
                None => self.accept(*connect, None),
                Some(step) => {
                    let future: BoxFuture<'static, _> = Box::pin(async move {
                        Ok(Prepared {
                            loaded: Some(step.await?),
                            epoch: None,
                            routes: crate::cluster::RoutePin::default(),
                            restart: false,
                        })
                    });
                    self.pending_connect = Some(Box::new((connect, future)));
                }
            }
            return;
        }
        let will = connect.will.as_ref().map(|will| {
            Arc::new(easy_mqtt_core::session::Message {
                topic: will.topic.clone(),
                payload: will.payload.clone(),
                qos: will.qos,
                retain: will.retain,
            })
        });
        let claimed = self.node.claim_for_connect(connect.client_id.clone(), will);
        let stored_client = connect.client_id.clone();
        let node = self.node.clone();
        let persistent = !connect.clean_session;
        let future: BoxFuture<'static, _> = Box::pin(async move {
            // The previous owner lets go before storage is read.
            let epoch = claimed.await?;
            // The live state this node held when the CONNECT came may have
            // been released to another node while the claim waited (a kick
            // from a claim older than this one): storage has it then.
            let storage_step = match storage_step {
                None if persistent
                    && matches!(node.connect_plan(&stored_client, false), ConnectPlan::Load) =>
                {
                    Some(node.load_for_connect(stored_client.clone()))
                }
                step => step,
            };
            let mut loaded = match storage_step {
                Some(step) => Some(step.await?),
                None => None,
            };
            let mut routes = crate::cluster::RoutePin::default();
            if let Some(Some(stored)) = &mut loaded {
                let filters: Vec<_> = stored
                    .subscriptions
                    .iter()
                    .map(|(f, _)| f.clone())
                    .collect();
                let (stored_routes, received) = futures_lite::future::zip(
                    node.store_routes(filters),
                    node.received_qos2(&stored_client),
                )
                .await;
                routes = stored_routes?;
                let received = received?;
                node.drop_received_copies(&stored_client, stored, &received)
                    .await?;
                node.note_loaded(&stored_client, stored, received);
            }
            Ok(Prepared {
                loaded,
                epoch,
                routes,
                restart: false,
            })
        });
        self.pending_connect = Some(Box::new((connect, future)));
    }

    /// Polls the pending storage work of a CONNECT; true when it finished.
    pub(super) fn poll_connect(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(pending) = &mut self.pending_connect else {
            return false;
        };
        let (connect, future) = &mut **pending;
        if self.closed {
            self.node.connect_abandoned(&connect.client_id);
            self.pending_connect = None;
            return false;
        }
        let Poll::Ready(result) = future.as_mut().poll(cx) else {
            return false;
        };
        let Some(pending) = self.pending_connect.take() else {
            return false;
        };
        let (connect, _) = *pending;
        match result {
            Ok(Prepared { restart: true, .. }) => self.start_connect(connect),
            Ok(prepared) if self.node.holds_epoch(&connect.client_id, prepared.epoch) => {
                let Prepared { loaded, routes, .. } = prepared;
                self.accept(*connect, loaded);
                drop(routes);
            }
            Ok(_) => {
                // Another node claimed the client id meanwhile.
                self.node.end_load(&connect.client_id);
                let now = self.node.runtime().now();
                lock(&self.cell.inner)
                    .conn
                    .refuse(ConnectReturnCode::ServerUnavailable, now);
            }
            Err(error) => {
                self.node.storage_failed("connect", &error);
                self.node.connect_abandoned(&connect.client_id);
                let now = self.node.runtime().now();
                lock(&self.cell.inner)
                    .conn
                    .refuse(ConnectReturnCode::ServerUnavailable, now);
            }
        }
        true
    }
}
