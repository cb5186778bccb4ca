//! The periodic token check with a virtual clock, and tokens and status
//! over the in-memory backend's records.

use easy_mqtt_core::ProtocolVersion;

use super::*;

fn aliyun(notice: u32) -> Aliyun {
    let config = AliyunConfig {
        enabled: true,
        instance_id: "post-cn-example".into(),
        token_expire_notice: notice,
        ..AliyunConfig::default()
    };
    Aliyun::new(config)
}

fn connect(username: &str, password: &str) -> Connect {
    Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_session: true,
        keep_alive: 60,
        client_id: "GID_test@@@d".into(),
        will: None,
        username: Some(username.into()),
        password: Some(Bytes::copy_from_slice(password.as_bytes())),
    }
}

fn info() -> ConnectionInfo {
    ConnectionInfo::tcp(([127, 0, 0, 1], 5000).into())
}

const LIMITS: (u64, u64) = (60_000, 30 * 86_400_000);

#[test]
fn expiry_notice_then_close_at_expiry() {
    let a = aliyun(300);
    let t0 = 10_000_000;
    let token = a
        .tokens
        .apply(vec!["t/#".into()], true, false, t0 + 600_000, t0, LIMITS)
        .unwrap_or_default();
    let ctx = ClientCtx {
        client_id: "GID_test@@@d",
        connection_id: 7,
    };
    a.on_connected(
        &ctx,
        &connect("Token|k|post-cn-example", &format!("R|{token}")),
        &info(),
    );
    assert!(a.tick(t0).is_empty());
    assert!(a.tick(t0 + 299_999).is_empty());
    let actions = a.tick(t0 + 300_000);
    assert!(
        matches!(
            &actions[..],
            [Action::Notice {
                topic: EXPIRE_NOTICE_TOPIC,
                ..
            }]
        ),
        "{actions:?}"
    );
    // Once only.
    assert!(a.tick(t0 + 400_000).is_empty());
    let actions = a.tick(t0 + 600_000);
    assert_eq!(
        actions,
        vec![Action::Close {
            connection_id: 7,
            client_id: "GID_test@@@d".into()
        }]
    );
    assert!(a.tick(t0 + 600_001).is_empty());
}

#[test]
fn revocation_notice_then_close_after_grace() {
    let a = aliyun(300);
    let t0 = 10_000_000;
    let token = a
        .tokens
        .apply(vec!["t/#".into()], true, true, t0 + 6_000_000, t0, LIMITS)
        .unwrap_or_default();
    let ctx = ClientCtx {
        client_id: "GID_test@@@d",
        connection_id: 3,
    };
    a.on_connected(
        &ctx,
        &connect("Token|k|post-cn-example", &format!("R|{token}|W|{token}")),
        &info(),
    );
    assert!(a.tokens.revoke(&token));
    let actions = a.tick(t0 + 1);
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(actions.iter().all(|a| matches!(
        a,
        Action::Notice {
            topic: INVALID_NOTICE_TOPIC,
            ..
        }
    )));
    assert!(a.tick(t0 + 1 + CLOSE_GRACE_MS - 1).is_empty());
    assert!(matches!(
        &a.tick(t0 + 1 + CLOSE_GRACE_MS)[..],
        [Action::Close {
            connection_id: 3,
            ..
        }]
    ));
}

#[test]
fn upload_replaces_the_token() {
    let a = aliyun(1);
    let t0 = now_ms();
    let old = a
        .tokens
        .apply(vec!["t/#".into()], true, false, t0 + 120_000, t0, LIMITS)
        .unwrap_or_default();
    let new = a
        .tokens
        .apply(vec!["t/#".into()], true, false, t0 + 1_200_000, t0, LIMITS)
        .unwrap_or_default();
    let ctx = ClientCtx {
        client_id: "GID_test@@@d",
        connection_id: 1,
    };
    a.on_connected(
        &ctx,
        &connect("Token|k|post-cn-example", &format!("R|{old}")),
        &info(),
    );
    let payload = serde_json::json!({"token": new, "type": "R"}).to_string();
    a.upload_token(&ctx, payload.as_bytes());
    // At the old token's expiry nothing happens: the new one is in force.
    assert!(a.tick(t0 + 120_000).is_empty());
    assert!(a.authorize_subscribe(&ctx, "t/x"));
    assert!(!a.authorize_subscribe(&ctx, "u/x"));
}

/// The mode over the in-memory backend's records, without a node.
fn stored(notice: u32) -> Aliyun {
    let a = aliyun(notice);
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let shared = Shared::of(storage);
    assert!(shared.is_some(), "the in-memory backend offers records");
    if let Some(shared) = shared {
        let _ = a.shared.set(shared);
    }
    a
}

fn status_event(kind: &str, channel: &str, time: u64) -> StatusEvent {
    StatusEvent {
        client_id: "GID_test@@@d".into(),
        time,
        event_type: kind.into(),
        channel_id: channel.into(),
        client_ip: None,
    }
}

#[test]
fn crossing_events_keep_the_client_online_and_the_log_is_newest_first() {
    let a = stored(300);
    futures_lite::future::block_on(async {
        let id = "GID_test@@@d";
        a.store_event(&status_event("connect", "n-1", 1)).await;
        // A takeover: the new channel connects before the old one ends.
        a.store_event(&status_event("connect", "n-2", 2)).await;
        a.store_event(&status_event("tcpclean", "n-1", 3)).await;
        let (online, last) = a.status_of(id).await.unwrap_or_default();
        assert!(online);
        assert_eq!(last.map(|e| e.event_type), Some("tcpclean".to_owned()));
        a.store_event(&status_event("disconnect", "n-2", 4)).await;
        let (online, _) = a.status_of(id).await.unwrap_or_default();
        assert!(!online);
        let history = a.history(id, 3).await.unwrap_or_default();
        let times: Vec<u64> = history.iter().map(|e| e.time).collect();
        assert_eq!(times, vec![4, 3, 2]);
        assert_eq!(
            a.status_of("GID_test@@@other").await.ok(),
            Some((false, None))
        );
    });
}

#[test]
fn tokens_go_through_storage() {
    let a = stored(300);
    futures_lite::future::block_on(async {
        let now = now_ms();
        let name = a
            .apply_token(vec!["t/#".into()], true, false, now + 120_000)
            .await
            .unwrap_or_default();
        assert!(!name.is_empty());
        // Gone from this node's cache, still in storage.
        a.tokens.revoke(&name);
        let token = a.fetch_token(&name).await.ok().flatten();
        assert_eq!(token.map(|t| t.expire_time), Some(now + 120_000));
        assert!(a.tokens.get(&name).is_some(), "cached again");
        assert_eq!(a.revoke_token(&name).await.ok(), Some(true));
        assert_eq!(a.revoke_token(&name).await.ok(), Some(false));
        assert_eq!(a.fetch_token(&name).await.ok(), Some(None));
        let refused = a
            .apply_token(vec!["t/#".into()], true, false, now + 1_000)
            .await;
        assert!(matches!(refused, Err(tokens::TokenError::Invalid(_))));
    });
}

#[test]
fn without_storage_token_calls_fail_as_unavailable() {
    let a = aliyun(300);
    futures_lite::future::block_on(async {
        let applied = a
            .apply_token(vec!["t/#".into()], true, false, now_ms() + 120_000)
            .await;
        assert!(matches!(applied, Err(tokens::TokenError::Storage(_))));
        assert!(a.fetch_token("x").await.is_err());
    });
}
