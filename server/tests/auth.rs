//! Connect-time HTTP authentication against a real HTTP service: a small
//! HTTP/1.1 server on 127.0.0.1 in this file, plain or TLS, that records
//! every request and answers as each test tells it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{RawClient, TempFile, WAIT, require_program, wait_until, wire};
use easy_mqtt_server::config::Config;

// ---------------------------------------------------------------------------
// The authentication service
// ---------------------------------------------------------------------------

/// What the service answers to one request.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        body: body.to_owned(),
        delay: Duration::ZERO,
    }
}

type Decide = dyn Fn(&serde_json::Value) -> Reply + Send + Sync;

/// One request as the service saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    content_type: String,
    /// The body as sent.
    raw: String,
    json: serde_json::Value,
}

#[derive(Default)]
struct Counters {
    open: AtomicUsize,
    max_open: AtomicUsize,
    connections: AtomicUsize,
    answered: AtomicUsize,
}

/// The HTTP authentication service: a thread per connection, keep-alive.
struct AuthService {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

impl AuthService {
    fn start(decide: impl Fn(&serde_json::Value) -> Reply + Send + Sync + 'static) -> AuthService {
        AuthService::start_with(decide, None)
    }

    /// With `tls`, every connection speaks TLS with this server config.
    fn start_with(
        decide: impl Fn(&serde_json::Value) -> Reply + Send + Sync + 'static,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> AuthService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let decide: Arc<Decide> = Arc::new(decide);
        {
            let (seen, counters, stop) = (seen.clone(), counters.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (seen, counters, decide, tls) =
                        (seen.clone(), counters.clone(), decide.clone(), tls.clone());
                    std::thread::spawn(move || {
                        let open = counters.open.fetch_add(1, Ordering::SeqCst) + 1;
                        counters.max_open.fetch_max(open, Ordering::SeqCst);
                        counters.connections.fetch_add(1, Ordering::SeqCst);
                        match tls {
                            None => serve(stream, &seen, &counters, &*decide),
                            Some(config) => {
                                let conn = rustls::ServerConnection::new(config).unwrap();
                                let tls = rustls::StreamOwned::new(conn, stream);
                                serve(tls, &seen, &counters, &*decide);
                            }
                        }
                        counters.open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
        }
        AuthService {
            addr,
            seen,
            counters,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mqtt/auth", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves requests on one connection until the peer closes it.
fn serve(stream: impl Read + Write, seen: &Mutex<Vec<Seen>>, counters: &Counters, decide: &Decide) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = 0;
        let mut content_type = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "content-type" => content_type = value.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let raw = String::from_utf8(body).unwrap();
        let json: serde_json::Value = serde_json::from_str(&raw).unwrap();
        seen.lock().unwrap().push(Seen {
            path,
            content_type,
            raw,
            json: json.clone(),
        });
        let answer = decide(&json);
        std::thread::sleep(answer.delay);
        let response = format!(
            "HTTP/1.1 {} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{}",
            answer.status,
            answer.body.len(),
            answer.body
        );
        // Counted before the bytes leave: once the broker has the answer it
        // may reply to its client at once, and a test reading the count then
        // must already see it.
        counters.answered.fetch_add(1, Ordering::SeqCst);
        let stream = reader.get_mut();
        if stream.write_all(response.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Clients and brokers
// ---------------------------------------------------------------------------

/// A CONNECT with credentials, clean session, keep-alive 60 s.
fn connect_packet(
    client_id: &str,
    username: Option<&str>,
    password: Option<&[u8]>,
    v31: bool,
) -> Vec<u8> {
    let (name, level): (&[u8], u8) = if v31 { (b"MQIsdp", 3) } else { (b"MQTT", 4) };
    let mut body = wire::field(name);
    body.push(level);
    let mut flags = 0b10u8;
    if username.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend(60u16.to_be_bytes());
    body.extend(wire::field(client_id.as_bytes()));
    if let Some(username) = username {
        body.extend(wire::field(username.as_bytes()));
    }
    if let Some(password) = password {
        body.extend(wire::field(password));
    }
    wire::packet(0x10, &body)
}

/// Sends a CONNECT and returns the client and the CONNACK's return code.
fn connect(addr: SocketAddr, client_id: &str, username: &str, password: &[u8]) -> (RawClient, u8) {
    let mut client = RawClient::open(addr);
    client.send(&connect_packet(
        client_id,
        Some(username),
        Some(password),
        false,
    ));
    let code = client.recv().connack().1;
    (client, code)
}

fn code_of(addr: SocketAddr, client_id: &str) -> u8 {
    connect(addr, client_id, "user", b"password").1
}

fn broker(url: &str, configure: impl FnOnce(&mut Config)) -> common::TestBroker {
    let url = url.to_owned();
    common::TestBroker::with(move |config| {
        config.mqtt.server.authentication_url = url;
        configure(config);
    })
}

/// A port on which nothing listens.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn true_accepts_and_the_request_follows_the_contract() {
    let service = AuthService::start(|_| reply(200, " true\n"));
    let broker = broker(&service.url(), |_| {});
    let (mut client, code) = connect(broker.addr(), "dev-1", "alice", b"s3cret");
    assert_eq!(code, 0, "`true` (trimmed) accepts");
    client.ping();
    let local = client.stream.local_addr().unwrap();

    let seen = service.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/mqtt/auth");
    assert_eq!(seen[0].content_type, "application/json");
    // The original's two fields first and unchanged, then ours.
    let expected = format!(
        r#"{{"username":"alice","password":"s3cret","clientId":"dev-1","remoteAddress":"{local}","protocol":"3.1.1","transport":"tcp","clientCertCn":null}}"#
    );
    assert_eq!(seen[0].raw, expected);
    assert_eq!(broker.metric(|m| &m.auth_accepted), 1);
}

#[test]
fn anything_but_true_refuses_with_4() {
    let service = AuthService::start(|json| match json["clientId"].as_str() {
        Some("false") => reply(200, "false"),
        Some("upper") => reply(200, "TRUE"),
        Some("object") => reply(200, r#"{"result":true}"#),
        _ => reply(204, ""),
    });
    let broker = broker(&service.url(), |_| {});
    for client_id in ["false", "upper", "object", "empty"] {
        let (mut client, code) = connect(broker.addr(), client_id, "bob", b"wrong");
        assert_eq!(code, 4, "{client_id}");
        client.expect_closed();
    }
    assert_eq!(broker.metric(|m| &m.auth_refused), 4);
    assert_eq!(broker.node().session_count(), 0);
}

#[test]
fn non_2xx_refuses_with_3() {
    let service = AuthService::start(|json| match json["clientId"].as_str() {
        Some("500") => reply(500, "true"),
        Some("403") => reply(403, "true"),
        _ => reply(302, "true"),
    });
    let broker = broker(&service.url(), |_| {});
    for client_id in ["500", "403", "302"] {
        assert_eq!(code_of(broker.addr(), client_id), 3, "HTTP {client_id}");
    }
    assert_eq!(broker.metric(|m| &m.auth_unavailable), 3);
}

#[test]
fn unreachable_service_refuses_with_3() {
    let url = format!("http://127.0.0.1:{}/auth", closed_port());
    let broker = broker(&url, |_| {});
    assert_eq!(code_of(broker.addr(), "c1"), 3);
    // And again: a failed call leaves nothing behind.
    assert_eq!(code_of(broker.addr(), "c2"), 3);
}

#[test]
fn slow_service_times_out_with_3() {
    let service = AuthService::start(|_| Reply {
        delay: Duration::from_secs(3),
        ..reply(200, "true")
    });
    let broker = broker(&service.url(), |c| {
        c.mqtt.server.authentication_timeout = 500
    });
    let started = Instant::now();
    assert_eq!(code_of(broker.addr(), "slow"), 3);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "refused after {took:?}");
    assert_eq!(
        service.counters.answered.load(Ordering::SeqCst),
        0,
        "refused by the timeout, before the service answered (after {took:?})"
    );
}

#[test]
fn a_slow_decision_does_not_hold_up_other_connections() {
    let service = AuthService::start(|json| match json["clientId"].as_str() {
        Some("slow") => Reply {
            delay: Duration::from_secs(3),
            ..reply(200, "true")
        },
        _ => reply(200, "true"),
    });
    let broker = broker(&service.url(), |_| {});
    let mut slow = RawClient::open(broker.addr());
    slow.send(&connect_packet("slow", Some("u"), Some(b"p"), false));
    wait_until(WAIT, "the slow request to reach the service", || {
        service.requests() == 1
    });
    assert_eq!(code_of(broker.addr(), "fast"), 0);
    assert_eq!(
        service.counters.answered.load(Ordering::SeqCst),
        1,
        "the fast CONNECT was answered while the slow one was still pending"
    );
    assert_eq!(slow.recv().connack(), (false, 0));
}

#[test]
fn two_hundred_concurrent_connects_share_a_bounded_pool() {
    let service = AuthService::start(|json| {
        let id = json["clientId"].as_str().unwrap_or_default();
        let n: u32 = id.trim_start_matches("c-").parse().unwrap();
        Reply {
            delay: Duration::from_millis(2),
            ..reply(200, if n.is_multiple_of(2) { "true" } else { "false" })
        }
    });
    let broker = broker(&service.url(), |c| {
        c.mqtt.server.authentication_max_connections = 4;
    });
    // Every CONNECT is sent before any CONNACK is read.
    let mut clients: Vec<(u32, RawClient)> = (0..200)
        .map(|n| {
            let mut client = RawClient::open(broker.addr());
            client.send(&connect_packet(
                &format!("c-{n}"),
                Some("u"),
                Some(b"p"),
                false,
            ));
            (n, client)
        })
        .collect();
    for (n, client) in &mut clients {
        let expected = if n.is_multiple_of(2) { 0 } else { 4 };
        assert_eq!(client.recv().connack().1, expected, "client c-{n}");
    }
    assert_eq!(service.requests(), 200);
    let max_open = service.counters.max_open.load(Ordering::SeqCst);
    let connections = service.counters.connections.load(Ordering::SeqCst);
    assert!(max_open <= 4, "{max_open} connections open at once");
    assert!(
        connections <= 4,
        "{connections} connections opened: keep-alive connections are reused"
    );
    assert_eq!(broker.metric(|m| &m.auth_accepted), 100);
    assert_eq!(broker.metric(|m| &m.auth_refused), 100);
}

#[test]
fn cached_acceptance_skips_the_service() {
    let service = AuthService::start(|_| reply(200, "true"));
    let broker = broker(&service.url(), |c| {
        c.mqtt.server.authentication_cache_ttl = 60
    });
    let (client, code) = connect(broker.addr(), "cached", "carol", b"pw");
    assert_eq!(code, 0);
    drop(client);
    broker.wait_connections(0);
    assert_eq!(connect(broker.addr(), "cached", "carol", b"pw").1, 0);
    assert_eq!(
        service.requests(),
        1,
        "the second CONNECT was answered from the cache"
    );
    // Another password (or client id) asks the service again.
    assert_eq!(connect(broker.addr(), "cached", "carol", b"other").1, 0);
    assert_eq!(connect(broker.addr(), "other", "carol", b"pw").1, 0);
    assert_eq!(service.requests(), 3);
}

#[test]
fn refusals_are_not_cached() {
    let service = AuthService::start(|_| reply(200, "false"));
    let broker = broker(&service.url(), |c| {
        c.mqtt.server.authentication_cache_ttl = 60
    });
    assert_eq!(code_of(broker.addr(), "c"), 4);
    assert_eq!(code_of(broker.addr(), "c"), 4);
    assert_eq!(service.requests(), 2);
}

#[test]
fn binary_passwords_absent_credentials_and_mqtt_3_1() {
    let service = AuthService::start(|_| reply(200, "true"));
    let broker = broker(&service.url(), |_| {});
    let (_binary, code) = connect(broker.addr(), "bin", "dave", &[0xFF, 0x00, 0x80]);
    assert_eq!(code, 0);
    let mut anonymous = RawClient::open(broker.addr());
    anonymous.send(&connect_packet("anon", None, None, true));
    assert_eq!(anonymous.recv().connack(), (false, 0));

    let seen = service.seen();
    let binary = &seen[0].json;
    assert_eq!(binary["password"], serde_json::Value::Null);
    assert_eq!(binary["passwordBase64"], "/wCA");
    let anon = &seen[1].json;
    assert_eq!(anon["username"], serde_json::Value::Null);
    assert_eq!(anon["password"], serde_json::Value::Null);
    assert_eq!(anon["protocol"], "3.1");
    assert!(anon.get("passwordBase64").is_none());
}

#[test]
fn a_client_that_leaves_while_pending_is_let_go() {
    let service = AuthService::start(|_| Reply {
        delay: Duration::from_secs(5),
        ..reply(200, "true")
    });
    let broker = broker(&service.url(), |c| {
        c.mqtt.server.authentication_timeout = 20_000
    });
    let mut client = RawClient::open(broker.addr());
    client.send(&connect_packet("leaver", Some("u"), Some(b"p"), false));
    wait_until(WAIT, "the request to reach the service", || {
        service.requests() == 1
    });
    drop(client);
    broker.wait_connections(0);
    assert_eq!(
        service.counters.answered.load(Ordering::SeqCst),
        0,
        "the connection ended before the service answered"
    );
    assert_eq!(broker.node().session_count(), 0);
}

// ---------------------------------------------------------------------------
// https
// ---------------------------------------------------------------------------

/// A test CA and a server certificate for 127.0.0.1 and localhost, made
/// with the `openssl` program in a temporary directory.
struct TestPki {
    dir: TempFile,
}

impl TestPki {
    fn generate() -> TestPki {
        let openssl = require_program("openssl", "openssl");
        let dir = TempFile::new("ext.cnf", b"subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n");
        let at = dir.path().parent().unwrap().to_path_buf();
        let run = |args: &[&str]| {
            let output = Command::new(&openssl)
                .args(args)
                .current_dir(&at)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Easy MQTT test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat());
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        TestPki { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().parent().unwrap().join(name)
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(self.path("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.path("server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Arc::new(config)
    }
}

#[test]
fn https_with_a_private_ca() {
    let pki = TestPki::generate();
    let service = AuthService::start_with(
        |json| {
            reply(
                200,
                if json["username"] == "ok" {
                    "true"
                } else {
                    "false"
                },
            )
        },
        Some(pki.server_config()),
    );
    let url = format!("https://127.0.0.1:{}/auth", service.addr.port());
    let ca = pki.path("ca.pem").to_string_lossy().into_owned();
    let trusting = broker(&url, |c| c.mqtt.server.authentication_ca_path = ca);
    assert_eq!(connect(trusting.addr(), "t1", "ok", b"pw").1, 0);
    assert_eq!(connect(trusting.addr(), "t2", "no", b"pw").1, 4);
    assert_eq!(service.requests(), 2);

    // Without the CA the certificate is not trusted: no request is made.
    let url = format!("https://localhost:{}/auth", service.addr.port());
    let untrusting = broker(&url, |_| {});
    assert_eq!(connect(untrusting.addr(), "t3", "ok", b"pw").1, 3);
    assert_eq!(service.requests(), 2);
}

#[test]
fn a_bad_ca_file_is_a_start_error() {
    let not_pem = TempFile::new("ca.pem", b"not a certificate\n");
    let path = not_pem.path().to_string_lossy().into_owned();
    let error = common::TestBroker::try_with(|c| {
        c.mqtt.server.authentication_url = "https://127.0.0.1:1/auth".into();
        c.mqtt.server.authentication_ca_path = path;
    })
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(error.contains("authentication-ca-path"), "{error}");
}
