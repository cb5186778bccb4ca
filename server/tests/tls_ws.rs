//! TLS and WebSocket listeners against third-party clients: mosquitto_pub
//! and mosquitto_sub over TLS (PEM and PKCS#12 certificates, client
//! certificates, reload), MQTT.js over ws:// and wss:// in Node, rumqttc
//! over WebSocket, a raw WebSocket client for the upgrade and framing
//! rules, and MQTT.js's browser bundle in headless Chromium.
//!
//! Certificates are made by `openssl` at test time (tls_ws/certs.rs). The
//! tests fail, saying what to install, when `openssl`, `mosquitto_pub`,
//! `node`, the npm packages of `tests/js` or `chromium` are missing
//! (scripts/test.sh installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "tls_ws/certs.rs"]
mod certs;
mod common;
#[path = "tls_ws/support.rs"]
mod support;
#[path = "tls_ws/ws_raw.rs"]
mod ws_raw;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certs::{CLIENT_CN, Certs, PFX_PASSWORD, copies, replace_file};
use common::{
    Client, LastWill, MosquittoSub, QoS, TempFile, TestBroker, WAIT, mosquitto_pub,
    mosquitto_pub_ok,
};
use easy_mqtt_server::broker::StartError;
use easy_mqtt_server::config::{Config, SslClientAuth};
use support::{Logs, free_port, node, node_ok, ws_connect};

fn path(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// TLS on the TCP and WebSocket ports with the PEM chain and key of server A.
fn pem_a(config: &mut Config) {
    let certs = Certs::get();
    let s = &mut config.mqtt.server;
    s.is_open_ssl = true;
    s.ssl_certificate_path = path(&certs.server_a.cert);
    s.ssl_key_path = path(&certs.server_a.key);
}

/// A broker whose configuration needs ports that must be fixed in advance
/// (`tls-port`, `wss-port`: 0 means off); `configure` gets two free ports.
/// Should another process take one before the broker binds it, try again.
fn start_with_ports(configure: impl Fn(&mut Config, u16, u16)) -> TestBroker {
    for _ in 0..3 {
        let (first, second) = (free_port(), free_port());
        if first == second {
            continue;
        }
        match TestBroker::try_with(|config| configure(config, first, second)) {
            Ok(broker) => return broker,
            Err(StartError::Listen { .. }) => continue,
            Err(other) => panic!("broker does not start: {other}"),
        }
    }
    panic!("no free ports in 3 attempts");
}

/// mosquitto_pub over TLS must fail (handshake refused).
fn assert_pub_refused(port: u16, args: &[&str]) {
    let output = mosquitto_pub(port, args);
    assert!(
        !output.status.success(),
        "mosquitto_pub {args:?} should have failed: {output:?}"
    );
}

// ---------------------------------------------------------------------------
// TLS with mosquitto
// ---------------------------------------------------------------------------

/// PEM chain + key: mosquitto over TLS 1.3 and 1.2 with the right CA; the
/// other CA, and plain MQTT on the TLS port, are refused.
#[test]
fn tls_pem_serves_mosquitto_and_refuses_a_wrong_ca() {
    Logs::get();
    let certs = Certs::get();
    let broker = TestBroker::with(pem_a);
    let port = broker.port();
    let ca_a = path(&certs.ca_a);
    let ca_b = path(&certs.ca_b);

    let mut sub = MosquittoSub::spawn(
        port,
        &[
            "--cafile",
            &ca_a,
            "--tls-version",
            "tlsv1.3",
            "-q",
            "1",
            "-t",
            "tls/#",
        ],
    );
    assert_eq!(sub.wait_subscribed(), vec![1]);
    mosquitto_pub_ok(
        port,
        &[
            "--cafile",
            &ca_a,
            "--tls-version",
            "tlsv1.2",
            "-q",
            "1",
            "-t",
            "tls/pem",
            "-m",
            "over tls",
        ],
    );
    let message = sub.recv();
    assert_eq!(
        (
            message.topic.as_str(),
            message.payload.as_slice(),
            message.qos
        ),
        ("tls/pem", &b"over tls"[..], 1)
    );

    assert_pub_refused(
        port,
        &["--cafile", &ca_b, "-t", "tls/pem", "-m", "wrong ca"],
    );
    assert_pub_refused(port, &["-t", "tls/pem", "-m", "plain on a TLS port"]);
    sub.expect_no_message(common::QUIET);
}

/// The original's form: a PKCS#12 file with its password (RSA key here).
#[test]
fn tls_pfx_serves_mosquitto() {
    Logs::get();
    let certs = Certs::get();
    let broker = TestBroker::with(|config| {
        let s = &mut config.mqtt.server;
        s.is_open_ssl = true;
        s.ssl_certificate_path = path(&certs.server_b_pfx);
        s.ssl_certificate_password = PFX_PASSWORD.into();
    });
    let port = broker.port();
    let ca_b = path(&certs.ca_b);
    let mut sub = MosquittoSub::spawn(port, &["--cafile", &ca_b, "-q", "2", "-t", "pfx/#"]);
    assert_eq!(sub.wait_subscribed(), vec![2]);
    for qos in ["0", "1", "2"] {
        mosquitto_pub_ok(
            port,
            &[
                "--cafile",
                &ca_b,
                "-q",
                qos,
                "-t",
                "pfx/t",
                "-m",
                &format!("pfx {qos}"),
            ],
        );
        assert_eq!(sub.recv().payload, format!("pfx {qos}").as_bytes());
    }
    assert_pub_refused(
        port,
        &["--cafile", &path(&certs.ca_a), "-t", "pfx/t", "-m", "x"],
    );
}

/// `tls-port` beside the plain `tcp-port` (is-open-ssl false): both serve
/// and route to each other; each refuses the other's protocol.
#[test]
fn plain_and_tls_side_by_side() {
    Logs::get();
    let certs = Certs::get();
    let broker = start_with_ports(|config, tls_port, _| {
        let s = &mut config.mqtt.server;
        s.tls_port = tls_port;
        s.ssl_certificate_path = path(&certs.server_a_pfx);
        s.ssl_certificate_password = PFX_PASSWORD.into();
    });
    let plain = broker.port();
    let tls = broker.broker().listener_addrs().tls.unwrap().port();
    let ca = path(&certs.ca_a);

    let mut plain_sub = MosquittoSub::spawn(plain, &["-q", "1", "-t", "mixed/#"]);
    let mut tls_sub = MosquittoSub::spawn(tls, &["--cafile", &ca, "-q", "1", "-t", "mixed/#"]);
    assert_eq!(plain_sub.wait_subscribed(), vec![1]);
    assert_eq!(tls_sub.wait_subscribed(), vec![1]);
    mosquitto_pub_ok(
        tls,
        &[
            "--cafile", &ca, "-q", "1", "-t", "mixed/a", "-m", "from tls",
        ],
    );
    mosquitto_pub_ok(plain, &["-q", "1", "-t", "mixed/b", "-m", "from plain"]);
    for sub in [&mut plain_sub, &mut tls_sub] {
        assert_eq!(sub.recv().payload, b"from tls");
        assert_eq!(sub.recv().payload, b"from plain");
    }
    assert_pub_refused(tls, &["-t", "mixed/c", "-m", "plain to tls"]);
    assert_pub_refused(
        plain,
        &["--cafile", &ca, "-t", "mixed/c", "-m", "tls to plain"],
    );
}

/// `ssl-client-auth: required`: no certificate, or one from another CA, is
/// refused; the client CA's certificate is accepted and its CN reaches the
/// connection's information (logged with the client id on connect).
#[test]
fn client_certificate_required() {
    let logs = Logs::get();
    let certs = Certs::get();
    let broker = TestBroker::with(|config| {
        pem_a(config);
        let s = &mut config.mqtt.server;
        s.ssl_client_auth = SslClientAuth::Required;
        s.ssl_client_ca_path = path(&certs.client_ca);
    });
    let port = broker.port();
    let ca = path(&certs.ca_a);
    assert_pub_refused(port, &["--cafile", &ca, "-t", "cc/t", "-m", "no cert"]);
    assert_pub_refused(
        port,
        &[
            "--cafile",
            &ca,
            "--cert",
            &path(&certs.rogue_client.cert),
            "--key",
            &path(&certs.rogue_client.key),
            "-t",
            "cc/t",
            "-m",
            "rogue",
        ],
    );
    mosquitto_pub_ok(
        port,
        &[
            "--cafile",
            &ca,
            "--cert",
            &path(&certs.client.cert),
            "--key",
            &path(&certs.client.key),
            "-i",
            "cert-required-client",
            "-t",
            "cc/t",
            "-m",
            "with cert",
        ],
    );
    let line = logs.wait_line(&["client connected", "cert-required-client"]);
    assert!(line.contains(CLIENT_CN), "CN missing from {line:?}");
    assert!(line.contains("transport=\"tls\""), "{line:?}");
}

/// `ssl-client-auth: optional`: without a certificate accepted (no CN),
/// with the client CA's accepted (CN), with another CA's refused.
#[test]
fn client_certificate_optional() {
    let logs = Logs::get();
    let certs = Certs::get();
    let broker = TestBroker::with(|config| {
        pem_a(config);
        let s = &mut config.mqtt.server;
        s.ssl_client_auth = SslClientAuth::Optional;
        s.ssl_client_ca_path = path(&certs.client_ca);
    });
    let port = broker.port();
    let ca = path(&certs.ca_a);
    mosquitto_pub_ok(
        port,
        &[
            "--cafile",
            &ca,
            "-i",
            "optional-anonymous",
            "-t",
            "oc/t",
            "-m",
            "x",
        ],
    );
    let line = logs.wait_line(&["client connected", "optional-anonymous"]);
    assert!(!line.contains("client_cert_cn"), "{line:?}");
    mosquitto_pub_ok(
        port,
        &[
            "--cafile",
            &ca,
            "--cert",
            &path(&certs.client.cert),
            "--key",
            &path(&certs.client.key),
            "-i",
            "optional-with-cert",
            "-t",
            "oc/t",
            "-m",
            "x",
        ],
    );
    let line = logs.wait_line(&["client connected", "optional-with-cert"]);
    assert!(line.contains(CLIENT_CN), "{line:?}");
    assert_pub_refused(
        port,
        &[
            "--cafile",
            &ca,
            "--cert",
            &path(&certs.rogue_client.cert),
            "--key",
            &path(&certs.rogue_client.key),
            "-t",
            "oc/t",
            "-m",
            "rogue",
        ],
    );
}

/// Unusable certificate settings stop `Broker::start` with an error that
/// names the key and the file.
#[test]
fn bad_certificates_fail_start_naming_key_and_file() {
    Logs::get();
    let certs = Certs::get();
    let garbage = TempFile::new("garbage.pfx", b"\x30\x03not a certificate at all");
    let missing = certs.dir.join("does-not-exist.key");
    let set = |cert: &std::path::Path, password: &str, key: Option<&std::path::Path>| {
        let (cert, password, key) = (path(cert), password.to_owned(), key.map(path));
        move |config: &mut Config| {
            let s = &mut config.mqtt.server;
            s.is_open_ssl = true;
            s.ssl_certificate_path = cert;
            s.ssl_certificate_password = password;
            s.ssl_key_path = key.unwrap_or_default();
        }
    };
    // How to configure, the key and the file the error names, and what it says.
    type Case = (
        Box<dyn FnOnce(&mut Config)>,
        &'static str,
        String,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            Box::new(set(&certs.server_a_pfx, "wrong password", None)),
            "mqtt.server.ssl-certificate-password",
            path(&certs.server_a_pfx),
            "wrong password",
        ),
        (
            Box::new(set(&certs.server_a.cert, "", Some(&missing))),
            "mqtt.server.ssl-key-path",
            path(&missing),
            "cannot read",
        ),
        (
            Box::new(set(garbage.path(), PFX_PASSWORD, None)),
            "mqtt.server.ssl-certificate-path",
            path(garbage.path()),
            "neither a PKCS#12",
        ),
        (
            Box::new(set(&certs.server_a.cert, "", None)),
            "mqtt.server.ssl-key-path",
            path(&certs.server_a.cert),
            "required with a PEM certificate",
        ),
        (
            Box::new(set(&certs.server_a.cert, "", Some(&certs.server_b.key))),
            "mqtt.server.ssl-key-path",
            path(&certs.server_b.key),
            "does not match",
        ),
        (
            Box::new(set(&certs.dir.join("missing.pfx"), PFX_PASSWORD, None)),
            "mqtt.server.ssl-certificate-path",
            path(&certs.dir.join("missing.pfx")),
            "cannot read",
        ),
        (
            Box::new(|config: &mut Config| {
                pem_a(config);
                let s = &mut config.mqtt.server;
                s.ssl_client_auth = SslClientAuth::Required;
                s.ssl_client_ca_path = path(&Certs::get().server_a.key);
            }),
            "mqtt.server.ssl-client-ca-path",
            path(&certs.server_a.key),
            "no CERTIFICATE",
        ),
    ];
    for (configure, key, file, what) in cases {
        let error = match TestBroker::try_with(configure) {
            Ok(_) => panic!("{key}: the broker started"),
            Err(error) => error,
        };
        assert!(matches!(error, StartError::Tls(_)), "{error:?}");
        let text = error.to_string();
        assert!(text.contains(key), "{key}: {text}");
        assert!(text.contains(&file), "{file}: {text}");
        assert!(text.contains(what), "{what}: {text}");
    }
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

/// A broker with TLS from copies of server A's PEM files, and the copies.
fn reloadable(interval: u32) -> (TestBroker, TempFile, std::path::PathBuf, std::path::PathBuf) {
    let certs = Certs::get();
    let (dir, files) = copies(&[
        ("server.pem", &certs.server_a.cert),
        ("server.key", &certs.server_a.key),
    ]);
    let (cert, key) = (files[0].clone(), files[1].clone());
    let broker = TestBroker::with(|config| {
        let s = &mut config.mqtt.server;
        s.is_open_ssl = true;
        s.ssl_certificate_path = path(&cert);
        s.ssl_key_path = path(&key);
        s.ssl_reload_interval = interval;
    });
    (broker, dir, cert, key)
}

/// `Broker::reload_tls`: new connections get the new certificate (CA B
/// verifies, CA A no longer does) while an open connection goes on; a
/// broken file is refused and the certificate before it stays.
#[test]
fn reload_serves_the_new_certificate_to_new_connections_only() {
    Logs::get();
    let certs = Certs::get();
    let (broker, _dir, cert, key) = reloadable(0);
    let port = broker.port();
    let (ca_a, ca_b) = (path(&certs.ca_a), path(&certs.ca_b));

    let mut sub = MosquittoSub::spawn(port, &["--cafile", &ca_a, "-q", "1", "-t", "reload/#"]);
    assert_eq!(sub.wait_subscribed(), vec![1]);

    replace_file(&certs.server_b.cert, &cert);
    replace_file(&certs.server_b.key, &key);
    assert_eq!(broker.broker().reload_tls(), Ok(true));

    assert_pub_refused(port, &["--cafile", &ca_a, "-t", "reload/t", "-m", "old ca"]);
    mosquitto_pub_ok(
        port,
        &[
            "--cafile", &ca_b, "-q", "1", "-t", "reload/t", "-m", "new ca",
        ],
    );
    // The connection made before the reload still works.
    assert_eq!(sub.recv().payload, b"new ca");

    // A broken file: the reload fails, naming the file; B stays.
    std::fs::write(&cert, b"-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    let error = broker.broker().reload_tls().unwrap_err();
    assert!(
        error
            .to_string()
            .contains("mqtt.server.ssl-certificate-path"),
        "{error}"
    );
    mosquitto_pub_ok(
        port,
        &[
            "--cafile", &ca_b, "-q", "1", "-t", "reload/t", "-m", "still b",
        ],
    );
    assert_eq!(sub.recv().payload, b"still b");
}

/// With `ssl-reload-interval`, a change of the files is noticed and loaded
/// by itself.
#[test]
fn reload_when_the_files_change() {
    Logs::get();
    let certs = Certs::get();
    let (broker, _dir, cert, key) = reloadable(1);
    let port = broker.port();
    let ca_b = path(&certs.ca_b);
    mosquitto_pub_ok(
        port,
        &["--cafile", &path(&certs.ca_a), "-t", "poll/t", "-m", "a"],
    );

    replace_file(&certs.server_b.key, &key);
    replace_file(&certs.server_b.cert, &cert);
    // The poll runs every second; should it catch the files half replaced
    // (key B, certificate A), that reload fails and the next one succeeds.
    Logs::get().wait_line(&["files changed: reloaded", &path(&cert)]);
    mosquitto_pub_ok(port, &["--cafile", &ca_b, "-t", "poll/t", "-m", "b"]);
    assert_pub_refused(
        port,
        &["--cafile", &path(&certs.ca_a), "-t", "poll/t", "-m", "a"],
    );
}

/// The binary reloads on SIGHUP and keeps serving (SIGTERM still stops it).
#[test]
fn binary_reloads_on_sighup() {
    let certs = Certs::get();
    let (_dir, files) = copies(&[
        ("server.pem", &certs.server_a.cert),
        ("server.key", &certs.server_a.key),
    ]);
    let (ca_a, ca_b) = (path(&certs.ca_a), path(&certs.ca_b));
    for attempt in 0..3 {
        let port = free_port();
        let config = format!(
            "mqtt:\n  server:\n    host: 127.0.0.1\n    tcp-port: {port}\n    websocket-port: 0\n    \
             api-port: 0\n    worker-threads: 2\n    log-level: info\n    is-open-ssl: true\n    \
             ssl-certificate-path: {}\n    ssl-key-path: {}\n    ssl-reload-interval: 0\n",
            path(&files[0]),
            path(&files[1])
        );
        let config = TempFile::new("conf.yml", config.as_bytes());
        let mut child = Command::new(env!("CARGO_BIN_EXE_easy-mqtt"))
            .arg("-c")
            .arg(config.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut text = String::new();
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                while let Some(end) = text.find('\n') {
                    let line: String = text.drain(..=end).collect();
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        });
        let wait_line = |what: &str| -> Result<(), String> {
            let deadline = Instant::now() + WAIT;
            let mut seen = String::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match lines.recv_timeout(left) {
                    Ok(line) if line.contains(what) => return Ok(()),
                    Ok(line) => seen.push_str(&line),
                    Err(_) => return Err(seen),
                }
            }
        };
        match wait_line("easy-mqtt started") {
            Ok(()) => {}
            Err(seen) if seen.contains("cannot listen") && attempt < 2 => {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            }
            Err(seen) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("easy-mqtt did not start: {seen}");
            }
        }
        mosquitto_pub_ok(port, &["--cafile", &ca_a, "-t", "hup/t", "-m", "a"]);
        replace_file(&certs.server_b.cert, &files[0]);
        replace_file(&certs.server_b.key, &files[1]);
        let pid = child.id().to_string();
        let kill = |signal: &str| {
            let status = Command::new("kill")
                .args([signal, pid.as_str()])
                .status()
                .unwrap();
            assert!(status.success());
        };
        kill("-HUP");
        wait_line("TLS certificate reloaded").unwrap_or_else(|seen| panic!("no reload: {seen}"));
        mosquitto_pub_ok(port, &["--cafile", &ca_b, "-t", "hup/t", "-m", "b"]);
        assert_pub_refused(port, &["--cafile", &ca_a, "-t", "hup/t", "-m", "a"]);
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGHUP stopped the broker"
        );
        kill("-TERM");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "easy-mqtt did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "{status}");
        return;
    }
}

/// A client that opens a connection and says nothing holds neither the
/// accept loop (others connect meanwhile) nor its socket beyond
/// `connect-timeout`: the TLS handshake and the WebSocket upgrade run in
/// the connection's task, with that deadline.
#[test]
fn silent_clients_do_not_stall_accepting() {
    Logs::get();
    let certs = Certs::get();
    let broker = start_with_ports(|config, tls_port, _| {
        pem_a(config);
        config.mqtt.server.is_open_ssl = false;
        config.mqtt.server.tls_port = tls_port;
        config.mqtt.server.connect_timeout = 1;
    });
    let addrs = broker.broker().listener_addrs();
    let tls_port = addrs.tls.unwrap().port();
    let silent: Vec<TcpStream> = (0..5)
        .flat_map(|_| {
            [
                TcpStream::connect(("127.0.0.1", tls_port)).unwrap(),
                TcpStream::connect(addrs.websocket).unwrap(),
            ]
        })
        .collect();
    // Were the handshakes in the accept loop, each silent connection would
    // hold it for the whole timeout (1 s): these would wait 5 s or more.
    let started = Instant::now();
    mosquitto_pub_ok(
        tls_port,
        &["--cafile", &path(&certs.ca_a), "-t", "s/t", "-m", "x"],
    );
    futures_lite::future::block_on(async {
        ws_connect(addrs.websocket, "/websocket", &["mqtt"])
            .await
            .unwrap();
    });
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "others waited {elapsed:?}"
    );
    for mut stream in silent {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            // Closed (a reset counts too).
            Ok(0) => {}
            Err(error)
                if !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("silent connection not closed by the timeout: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// WebSocket with real clients
// ---------------------------------------------------------------------------

fn ws_options(addr: SocketAddr, client_id: &str) -> common::MqttOptions {
    let mut options =
        common::MqttOptions::new(client_id, format!("ws://{addr}/websocket"), addr.port());
    options.set_transport(rumqttc::Transport::Ws);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// rumqttc over WebSocket is a first-class connection: round trips with a
/// TCP client, its will on an abrupt close, and takeover by a TCP client
/// with its client id.
#[tokio::test]
async fn rumqttc_over_websocket() {
    Logs::get();
    let broker = TestBroker::start();
    let ws_addr = broker.broker().listener_addrs().websocket;

    let (mut ws_client, _) = Client::connect_opts(ws_options(ws_addr, "rumqttc-ws")).await;
    let mut tcp_client = Client::connect(broker.addr(), "rumqttc-tcp").await;
    ws_client.subscribe("rws/#", QoS::ExactlyOnce).await;
    tcp_client.subscribe("rws/#", QoS::AtLeastOnce).await;
    tcp_client
        .publish("rws/from-tcp", QoS::ExactlyOnce, false, b"to ws".to_vec())
        .await;
    ws_client
        .publish(
            "rws/from-ws",
            QoS::AtLeastOnce,
            false,
            vec![0u8, 255, 1, 254],
        )
        .await;
    let got = ws_client.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("rws/from-tcp", &b"to ws"[..])
    );
    let got = ws_client.recv().await;
    assert_eq!(&got.payload[..], [0u8, 255, 1, 254]);
    for _ in 0..2 {
        tcp_client.recv().await;
    }

    // The will of a WebSocket client that vanishes.
    let mut options = ws_options(ws_addr, "rumqttc-ws-will");
    options.set_last_will(LastWill::new("rws/will", "gone", QoS::AtLeastOnce, false));
    let (doomed, _) = Client::connect_opts(options).await;
    doomed.kill();
    let will = tcp_client.recv().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("rws/will", &b"gone"[..])
    );

    // Takeover across transports.
    let _usurper = Client::connect(broker.addr(), "rumqttc-ws").await;
    ws_client.expect_closed().await;
}

/// MQTT.js in Node over ws:// (websocket-port) and wss:// (wss-port, side
/// by side): QoS 1 and 2 round trips with a binary payload.
#[test]
fn mqttjs_over_ws_and_wss() {
    Logs::get();
    let certs = Certs::get();
    let broker = start_with_ports(|config, _, wss_port| {
        pem_a(config);
        config.mqtt.server.is_open_ssl = false;
        config.mqtt.server.wss_port = wss_port;
    });
    let addrs = broker.broker().listener_addrs();
    let ws_url = format!("ws://{}/websocket", addrs.websocket);
    let out = node_ok("mqttjs_roundtrip.mjs", &[&ws_url], Duration::from_secs(30));
    assert!(out.contains("ok"), "{out}");
    let wss_url = format!("wss://127.0.0.1:{}/websocket", addrs.wss.unwrap().port());
    let ca = path(&certs.ca_a);
    let out = node_ok(
        "mqttjs_roundtrip.mjs",
        &[&wss_url, &ca],
        Duration::from_secs(30),
    );
    assert!(out.contains("ok"), "{out}");
    // The wrong CA is refused.
    let output = node(
        "mqttjs_roundtrip.mjs",
        &[&wss_url, &path(&certs.ca_b)],
        Duration::from_secs(30),
    );
    assert!(!output.status.success(), "{output:?}");
}

/// With `is-open-ssl` (PKCS#12 here) the WebSocket port speaks WSS only.
#[test]
fn mqttjs_over_wss_when_is_open_ssl() {
    Logs::get();
    let certs = Certs::get();
    let broker = TestBroker::with(|config| {
        let s = &mut config.mqtt.server;
        s.is_open_ssl = true;
        s.ssl_certificate_path = path(&certs.server_a_pfx);
        s.ssl_certificate_password = PFX_PASSWORD.into();
    });
    let port = broker.broker().listener_addrs().websocket.port();
    let wss_url = format!("wss://127.0.0.1:{port}/websocket");
    let out = node_ok(
        "mqttjs_roundtrip.mjs",
        &[&wss_url, &path(&certs.ca_a)],
        Duration::from_secs(30),
    );
    assert!(out.contains("ok"), "{out}");
    let output = node(
        "mqttjs_roundtrip.mjs",
        &[&format!("ws://127.0.0.1:{port}/websocket")],
        Duration::from_secs(30),
    );
    assert!(
        !output.status.success(),
        "plain ws on a WSS port: {output:?}"
    );
}

/// A real browser: headless Chromium runs MQTT.js's browser bundle against
/// the WebSocket port; the page shows its own message coming back, and a
/// mosquitto subscriber over TCP sees it too.
#[test]
fn browser_over_websocket() {
    Logs::get();
    let broker = TestBroker::start();
    let addr = broker.broker().listener_addrs().websocket;
    let mut sub = MosquittoSub::spawn(broker.port(), &["-q", "1", "-t", "browser/#"]);
    assert_eq!(sub.wait_subscribed(), vec![1]);
    let topic = format!("browser/{}", std::process::id());
    let url = format!("ws://127.0.0.1:{}/websocket", addr.port());
    let out = node_ok("browser_test.mjs", &[&url, &topic], Duration::from_secs(90));
    assert!(out.contains("\"state\":\"ok\""), "{out}");
    assert!(out.contains("hello from the browser"), "{out}");
    let message = sub.recv();
    assert_eq!(
        (message.topic.as_str(), message.payload.as_slice()),
        (topic.as_str(), &b"hello from the browser"[..])
    );
}
