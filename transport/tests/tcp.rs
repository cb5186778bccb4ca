//! The TCP listener: binding, echoing, TCP_NODELAY, and surviving EMFILE.

// Test helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_io::Timer;
use async_net::TcpStream;
use easy_mqtt_transport::TcpListener;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};

/// Set in the child process of `survives_running_out_of_file_descriptors`.
const CHILD_ENV: &str = "EASY_MQTT_TRANSPORT_EMFILE_CHILD";
/// Printed by the child when it succeeded.
const CHILD_DONE: &str = "EMFILE-RECOVERED";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Runs `fut`, failing the test if it takes longer than `secs` seconds.
async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    future::or(fut, async {
        Timer::after(Duration::from_secs(secs)).await;
        panic!("timed out after {secs} s: {what}")
    })
    .await
}

/// Echoes everything read on `stream` back to it.
async fn echo(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = [0; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Writes `message` from `from`, reads it on `to`.
async fn send_and_receive(
    from: &mut (impl AsyncWrite + Unpin),
    to: &mut (impl AsyncRead + Unpin),
    message: &[u8],
) {
    from.write_all(message).await.expect("write");
    let mut got = vec![0; message.len()];
    to.read_exact(&mut got).await.expect("read");
    assert_eq!(got, message);
}

#[test]
fn binds_accepts_and_echoes() {
    smol::block_on(async {
        let listener = TcpListener::bind(loopback()).await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);

        let listener = std::sync::Arc::new(listener);
        let _server = smol::spawn({
            let listener = std::sync::Arc::clone(&listener);
            async move {
                loop {
                    let (stream, _) = listener.accept().await;
                    smol::spawn(echo(stream)).detach();
                }
            }
        });
        within(5, "echo", async {
            let mut clients = Vec::new();
            for _ in 0..3 {
                clients.push(TcpStream::connect(addr).await.expect("connect"));
            }
            for (i, client) in clients.iter_mut().enumerate() {
                let message = format!("hello {i}");
                client.write_all(message.as_bytes()).await.expect("write");
                let mut got = vec![0; message.len()];
                client.read_exact(&mut got).await.expect("read");
                assert_eq!(got, message.as_bytes());
            }
        })
        .await;
        assert_eq!(listener.stats().accepted, 3);
    });
}

#[test]
fn accepted_streams_have_nodelay_and_the_peer_address() {
    smol::block_on(async {
        let listener = TcpListener::bind(loopback()).await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = within(5, "accept", listener.accept()).await;
        assert_eq!(peer, client.local_addr().expect("client addr"));
        assert!(stream.nodelay().expect("nodelay"));
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.tcp_nodelay().expect("TCP_NODELAY"));
    });
}

#[test]
fn binds_with_reuseaddr() {
    smol::block_on(async {
        let listener = TcpListener::bind(loopback()).await.expect("bind");
        let sock = socket2::SockRef::from(&listener);
        assert!(sock.reuse_address().expect("SO_REUSEADDR"));
        // SO_REUSEADDR does not let a second listener take a listening port.
        let addr = listener.local_addr().expect("local_addr");
        assert!(TcpListener::bind(addr).await.is_err());
    });
}

#[test]
fn rebinds_a_port_left_in_time_wait() {
    // Between dropping the listener and binding again, another socket on
    // this machine may take the freed port as its ephemeral port; that is
    // not what this test is about, so it tries a few fresh ports. Without
    // SO_REUSEADDR every attempt fails on TIME_WAIT.
    let mut last_error = None;
    for _ in 0..5 {
        match time_wait_rebind_attempt() {
            Ok(()) => return,
            Err(error) => last_error = Some(error),
        }
    }
    panic!("rebind after TIME_WAIT failed every time: {last_error:?}");
}

fn time_wait_rebind_attempt() -> std::io::Result<()> {
    smol::block_on(async {
        let listener = TcpListener::bind(loopback()).await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let ex = smol::LocalExecutor::new();
        ex.run(within(5, "connection", async {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            let (mut server, _) = listener.accept().await;
            send_and_receive(&mut client, &mut server, b"x").await;
            // The server closes first: its side of the connection stays in
            // TIME_WAIT, which without SO_REUSEADDR blocks the next bind.
            drop(server);
            let mut rest = Vec::new();
            let _ = client.read_to_end(&mut rest).await;
        }))
        .await;
        drop(listener);
        let again = TcpListener::bind(addr).await?;
        assert_eq!(again.local_addr().expect("local_addr"), addr);
        Ok(())
    })
}

/// Runs `emfile_child` in a child process whose open-file limit is 64, so
/// the limit does not touch this process.
#[test]
#[cfg(unix)]
fn survives_running_out_of_file_descriptors() {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" "$@""#)
        .arg(exe)
        .args(["emfile_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the EMFILE child did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("child output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(CHILD_DONE),
        "the EMFILE child failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

/// The child's side of `survives_running_out_of_file_descriptors`; does
/// nothing unless `CHILD_ENV` is set.
#[test]
fn emfile_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    smol::block_on(async {
        let listener = Rc::new(TcpListener::bind(loopback()).await.expect("bind"));
        let addr = listener.local_addr().expect("local_addr");
        let (tx, rx) = smol::channel::unbounded();
        let ex = smol::LocalExecutor::new();
        let _acceptor = ex.spawn({
            let listener = Rc::clone(&listener);
            async move {
                loop {
                    let (stream, _) = listener.accept().await;
                    if tx.send(stream).await.is_err() {
                        break;
                    }
                }
            }
        });
        ex.run(within(20, "the EMFILE scenario", async {
            // A first connection works.
            let mut client = TcpStream::connect(addr).await.expect("connect");
            let mut server = within(3, "first accept", rx.recv()).await.expect("recv");
            send_and_receive(&mut client, &mut server, b"before").await;

            // Use up every file descriptor.
            let mut fillers = Vec::new();
            loop {
                match std::fs::File::open("/dev/null") {
                    Ok(file) => fillers.push(file),
                    Err(err) if err.raw_os_error() == Some(24) => break, // EMFILE
                    Err(err) => panic!("unexpected error while filling: {err}"),
                }
                assert!(fillers.len() < 4096, "the open-file limit is not in force");
            }
            // Free one for a client socket: the connection completes in the
            // backlog, and accepting it needs a descriptor there is none of.
            fillers.pop();
            let mut stuck = TcpStream::connect(addr)
                .await
                .expect("connect at the limit");
            let start = Instant::now();
            while listener.stats().resource_errors < 3 {
                assert!(
                    start.elapsed() < Duration::from_secs(3),
                    "accept did not report EMFILE: {:?}",
                    listener.stats()
                );
                Timer::after(Duration::from_millis(10)).await;
            }
            assert!(rx.is_empty(), "nothing can be accepted at the limit");

            // Free some descriptors: the waiting connection is accepted.
            fillers.truncate(fillers.len().saturating_sub(8));
            let mut server = within(3, "accept after EMFILE", rx.recv())
                .await
                .expect("recv");
            send_and_receive(&mut stuck, &mut server, b"recovered").await;
            send_and_receive(&mut server, &mut stuck, b"both ways").await;

            // And a new connection is served.
            let mut fresh = TcpStream::connect(addr).await.expect("connect after");
            let mut server = within(3, "accept a new connection", rx.recv())
                .await
                .expect("recv");
            send_and_receive(&mut fresh, &mut server, b"after").await;

            let stats = listener.stats();
            assert_eq!(stats.accepted, 3);
            assert_eq!(stats.other_errors, 0);
            println!("{CHILD_DONE} {stats:?}");
        }))
        .await;
    });
}

/// An accepted connection skips the read that would fail after a short
/// one and waits for readability instead; data that comes after it (at
/// once, or later) must still wake the reader.
#[test]
fn reads_wake_for_data_that_follows_a_short_read() {
    smol::block_on(async {
        let listener = TcpListener::bind(loopback()).await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = within(5, "accept", listener.accept()).await;
        let mut buf = [0; 256];
        for round in 0..300_u32 {
            let len = 1 + (round as usize * 37) % 200;
            let message: Vec<u8> = (0..len).map(|i| (i as u32 + round) as u8).collect();
            client.write_all(&message).await.expect("write");
            // A buffer larger than what was sent: every read is short.
            let mut got = Vec::new();
            while got.len() < len {
                let n = within(5, "read after a short read", server.read(&mut buf))
                    .await
                    .expect("read");
                assert!(n > 0, "unexpected end of stream in round {round}");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, message, "round {round}");
            // Every other round the next bytes come only after the reader is
            // waiting again.
            if round % 2 == 1 {
                let pending = server.read(&mut buf);
                let late = async {
                    Timer::after(Duration::from_millis(2)).await;
                    client.write_all(b"late").await.expect("write late");
                };
                let (n, ()) = within(5, "late data", future::zip(pending, late)).await;
                let n = n.expect("read late");
                assert_eq!(&buf[..n], b"late"[..n].as_ref());
                let mut rest = vec![0; 4 - n];
                server.read_exact(&mut rest).await.expect("rest of late");
            }
        }
    });
}
