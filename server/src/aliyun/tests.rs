//! The periodic token check with a virtual clock.

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
