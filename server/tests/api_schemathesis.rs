//! The running HTTP API checked against its OpenAPI document
//! (`docs/openapi.json`) by schemathesis: generated valid and invalid
//! requests to every operation, no server error, and every response
//! (status, content type, body, headers) as documented.
//!
//! schemathesis comes from PyPI; `scripts/test.sh` installs it into
//! `target/api-venv` and points `EASY_MQTT_SCHEMATHESIS` at it. Without it
//! this test fails and says how to install it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{RawClient, TempFile, TestBroker, run_with_timeout, wire};

/// The schemathesis program: `EASY_MQTT_SCHEMATHESIS`, the one in
/// `target/api-venv`, or the one on PATH.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("EASY_MQTT_SCHEMATHESIS") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "EASY_MQTT_SCHEMATHESIS names {}, which does not exist",
            path.display()
        );
        return path;
    }
    let venv =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/api-venv/bin/schemathesis");
    if venv.is_file() {
        return venv;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("schemathesis"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "schemathesis is not installed; this test needs it. Run scripts/test.sh, which \
                 installs it, or: python3 -m venv target/api-venv && \
                 target/api-venv/bin/pip install schemathesis==4.32.5"
            )
        })
}

#[test]
fn the_api_conforms_to_its_openapi_document() {
    let program = schemathesis();
    let token = "schemathesis-token";
    let broker = TestBroker::with(|c| c.mqtt.server.api_token = token.into());
    // Some state, so that lists and details are not all empty: a live
    // client with subscriptions, an offline persistent session with a
    // queued message, retained messages.
    let mut live = RawClient::connect(broker.addr(), "live-1");
    live.subscribe(1, &[("sensors/#", 1), ("alerts/+", 0)]);
    let (mut keeper, _) =
        RawClient::connect_with(broker.addr(), &wire::Connect::new("keeper").clean(false));
    keeper.subscribe(1, &[("sensors/#", 1)]);
    keeper.send(&wire::disconnect());
    keeper.expect_closed();
    for (topic, payload) in [("sensors/1", &b"21.5"[..]), ("sensors/bin", &[0xFF, 0][..])] {
        live.send(&wire::publish(topic, 0, 0, true, payload));
    }
    live.ping_drain();

    let api = broker.broker().api_addr().unwrap();
    let document = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    // schemathesis keeps its example database in the working directory.
    let workdir = TempFile::new("README", b"schemathesis working directory\n");
    let seed = std::env::var("EASY_MQTT_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20240501".into());
    let mut command = Command::new(&program);
    command
        .current_dir(workdir.path().parent().unwrap())
        .env("NO_COLOR", "1")
        .arg("run")
        .arg(&document)
        .args(["--url", &format!("http://{api}")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all"])
        .args(["--max-examples", "30"])
        .args(["--seed", &seed])
        // One worker: CPython 3.11 up to 3.11.7 can fail `ast.parse` run
        // from two threads at once ("AST constructor recursion depth
        // mismatch"), which hypothesis does while describing strategies.
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"]);
    let output = run_with_timeout(command, Duration::from_secs(240));
    assert!(
        output.status.success(),
        "schemathesis found responses that break docs/openapi.json (seed {seed}):\n{}\n{}",
        output.stdout,
        output.stderr
    );
    assert!(
        output.stdout.contains("passed"),
        "schemathesis ran no test:\n{}",
        output.stdout
    );
}
