#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A Mosquitto restart in the middle of a command stream: afterwards no
//! command is lost and none was executed twice.
//!
//! The test starts its own `mosquitto` (binary from `SEALCAST_MOSQUITTO_BIN`
//! or the PATH) on a free port of 127.0.0.1 with persistence in a temporary
//! folder, streams sealed commands from a sender to a receiver (both with
//! persistent sessions), stops the broker with SIGTERM (which saves its
//! database) midway, starts it again on the same port, and checks that every
//! command was executed exactly once. Without Mosquitto it prints a NOT RUN
//! banner, or fails when `SEALCAST_REQUIRE_EXTERNAL=1`.

mod common;

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use sealcast_mqtt::{Delivery, GroupChannel, MqttClient, TopicScheme, deliver_once};

/// Commands in the stream.
const N: u64 = 200;
/// Pause between two publishes, so the restart falls in the middle.
const PACE: Duration = Duration::from_millis(10);
/// How long the broker stays down.
const OUTAGE: Duration = Duration::from_secs(1);
/// Hard limit for the whole test.
const LIMIT: Duration = Duration::from_secs(180);

/// Finds `mosquitto` (`SEALCAST_MOSQUITTO_BIN`, else the PATH and the sbin
/// folders).
fn mosquitto_bin(test: &str) -> Option<PathBuf> {
    sealcast_testkit::program(
        "mosquitto",
        "SEALCAST_MOSQUITTO_BIN",
        test,
        "the mosquitto binary (Debian: apt-get install mosquitto) in PATH or at SEALCAST_MOSQUITTO_BIN",
    )
}

use sealcast_testkit::running_as_root;

/// A mosquitto process of this test. Dropping it stops the process (SIGTERM,
/// then SIGKILL), also when the test panics.
struct Mosquitto {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// Whether the broker keeps sessions and queued messages across restarts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Persistence {
    On,
    Off,
}

impl Mosquitto {
    fn start(bin: &Path, dir: &Path, persistence: Persistence) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             log_dest stderr\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        );
        match persistence {
            Persistence::On => conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.display()
            )),
            Persistence::Off => conf.push_str("persistence false\n"),
        }
        if running_as_root() {
            // Otherwise mosquitto drops to user "mosquitto", which cannot
            // write the persistence file into our private temp folder.
            conf.push_str("user root\n");
        }
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let mut m = Self {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            port,
            child: None,
        };
        m.spawn();
        m
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("mosquitto exited at start ({status}); log:\n{}", self.log());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mosquitto does not listen on {addr}; log:\n{}", self.log());
    }

    /// SIGTERM (mosquitto saves its database and exits), then SIGKILL if it
    /// is still there after a few seconds.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // CONT after TERM: a process frozen with SIGSTOP acts on TERM only
        // once it runs again.
        for signal in ["-TERM", "-CONT"] {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL` …) to the process.
    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status()
                .unwrap();
            assert!(status.success(), "kill -{signal} failed");
        }
    }

    /// SIGKILL: no clean shutdown, nothing saved.
    fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_lost_or_repeated_across_a_mosquitto_restart() {
    let test = "no_command_lost_or_repeated_across_a_mosquitto_restart";
    let Some(bin) = mosquitto_bin(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&bin, dir.path(), Persistence::On);
    let outcome = tokio::time::timeout(LIMIT, command_stream_across_restart(&mut broker)).await;
    if outcome.is_err() {
        panic!(
            "test exceeded its time limit; mosquitto log:\n{}",
            broker.log()
        );
    }
    // `broker` (and its process) goes away here, and on any panic above.
}

async fn command_stream_across_restart(broker: &mut Mosquitto) {
    let started = Instant::now();
    let url = broker.url();
    let run = unique("restart");
    let scheme = TopicScheme::with_prefix(&run).unwrap();
    let group = Group::new(b"substation-4", 11);
    let topic = scheme.group(&group.id, GroupChannel::Command);

    // Both ends keep their sessions: the broker queues for the receiver
    // while it is away, and resumes the sender's unacknowledged publishes.
    let rx_cfg = config(&url, &format!("{run}-rx"))
        .with_persistent_session(true)
        .with_subscription(scheme.group_filter(&group.id));
    let (rx_client, mut sub) = connect(rx_cfg).await;
    let (tx_client, _tx_sub) =
        MqttClient::connect(config(&url, &format!("{run}-tx")).with_persistent_session(true))
            .unwrap();
    tx_client.wait_connected(STEP).await.unwrap();

    let commands: Vec<_> = (0..N)
        .map(|i| group.seal(i + 1, &topic, format!("cmd-{i}").as_bytes()))
        .collect();

    let executed = Arc::new(AtomicU64::new(0));
    let receiver_task = {
        let executed = executed.clone();
        let mut receiver = group.receiver();
        tokio::spawn(async move {
            let mut counts = vec![0u32; N as usize];
            let mut duplicates = 0u64;
            let deadline = Instant::now() + Duration::from_secs(150);
            // Bounded in messages and in time.
            for _ in 0..(4 * N) {
                if executed.load(Ordering::SeqCst) == N {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Some(incoming)) = tokio::time::timeout(left, sub.next_message()).await
                else {
                    break;
                };
                match deliver_once(incoming, |t, b| receiver.open(b, t, NOW)).await {
                    Delivery::Executed { value, .. } => {
                        let text = String::from_utf8(value.payload).unwrap();
                        let i: usize = text.strip_prefix("cmd-").unwrap().parse().unwrap();
                        counts[i] += 1;
                        executed.fetch_add(1, Ordering::SeqCst);
                    }
                    Delivery::Duplicate { .. } => duplicates += 1,
                    other => panic!("unexpected delivery {other:?}"),
                }
            }
            (counts, duplicates, sub)
        })
    };
    let sender_task = {
        let tx_client = tx_client.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for bytes in commands {
                tx_client.publish(topic.clone(), bytes).await.unwrap();
                tokio::time::sleep(PACE).await;
            }
            tx_client.flush(Duration::from_secs(90)).await.unwrap();
        })
    };

    // Midway: stop the broker, then start it again on the same port.
    let deadline = Instant::now() + Duration::from_secs(60);
    while executed.load(Ordering::SeqCst) < N / 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_stop = executed.load(Ordering::SeqCst);
    assert!(at_stop >= N / 3, "the stream did not get going");
    tokio::task::block_in_place(|| broker.stop());
    // Down long enough for the sender's queue to fill up and block it.
    tokio::time::sleep(OUTAGE).await;
    tokio::task::block_in_place(|| broker.restart());
    let at_restart = executed.load(Ordering::SeqCst);
    assert!(
        at_restart < N,
        "the stream finished before the restart ({at_restart}); the test proves nothing"
    );

    sender_task.await.unwrap();
    let (counts, duplicates, _sub) = receiver_task.await.unwrap();
    let missing: Vec<usize> = (0..counts.len()).filter(|i| counts[*i] == 0).collect();
    let repeated: Vec<usize> = (0..counts.len()).filter(|i| counts[*i] > 1).collect();
    assert!(
        missing.is_empty(),
        "lost commands: {missing:?}\n{}",
        broker.log()
    );
    assert!(repeated.is_empty(), "executed twice: {repeated:?}");
    let rx_status = rx_client.status();
    let tx_status = tx_client.status();
    assert!(rx_status.connections >= 2, "{rx_status:?}");
    assert!(tx_status.connections >= 2, "{tx_status:?}");
    // Mosquitto restored both sessions from its database.
    assert!(rx_status.session_present && tx_status.session_present);
    assert!(tx_status.publishes_acked >= N, "{tx_status:?}");

    rx_client.disconnect(STEP).await.unwrap();
    tx_client.disconnect(STEP).await.unwrap();
    eprintln!(
        "{N} commands across a mosquitto restart (stopped after {at_stop} executed, \
         {at_restart} when it was back): each executed once, {duplicates} duplicates dropped, \
         receiver connections {}, sender connections {}, republished after session loss {}; {:?}",
        rx_status.connections,
        tx_status.connections,
        tx_status.republished_after_session_loss,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_publishes_survive_a_broker_that_lost_the_session() {
    let test = "unacknowledged_publishes_survive_a_broker_that_lost_the_session";
    let Some(bin) = mosquitto_bin(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&bin, dir.path(), Persistence::Off);
    let outcome = tokio::time::timeout(LIMIT, publishes_across_session_loss(&mut broker)).await;
    if outcome.is_err() {
        broker.signal("CONT");
        panic!(
            "test exceeded its time limit; mosquitto log:\n{}",
            broker.log()
        );
    }
}

/// rumqttc drops its unacknowledged publishes when the broker answers a
/// reconnect with a *new* session; the adapter puts them back. The broker
/// is frozen (SIGSTOP) so that publishes are written but never acknowledged,
/// then killed without saving anything and started again.
async fn publishes_across_session_loss(broker: &mut Mosquitto) {
    const K: u64 = 5;
    let started = Instant::now();
    let url = broker.url();
    let run = unique("loss");
    let scheme = TopicScheme::with_prefix(&run).unwrap();
    let group = Group::new(b"pumps", 13);
    let topic = scheme.group(&group.id, GroupChannel::Command);

    // A clean-session sender that waits 1 to 2 s before reconnecting, so
    // the receiver below is subscribed again before the re-sent publishes
    // arrive.
    let slow = sealcast_mqtt::Backoff {
        initial: Duration::from_secs(2),
        max: Duration::from_secs(2),
        max_attempts: Some(20),
    };
    let (tx_client, _tx_sub) =
        MqttClient::connect(config(&url, &format!("{run}-tx")).with_backoff(slow)).unwrap();
    tx_client.wait_connected(STEP).await.unwrap();

    broker.signal("STOP");
    for i in 0..K {
        let bytes = group.seal(i + 1, &topic, format!("pump-{i}").as_bytes());
        tx_client.publish(topic.clone(), bytes).await.unwrap();
    }
    // Let the connection task write them to the (frozen) broker's socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tx_client.status().publishes_acked, 0);
    tokio::task::block_in_place(|| {
        broker.crash();
        broker.spawn();
    });

    let rx_cfg =
        config(&url, &format!("{run}-rx")).with_subscription(scheme.group_filter(&group.id));
    let (rx_client, mut sub) = connect(rx_cfg).await;
    let mut receiver = group.receiver();
    let mut seen = Vec::new();
    for _ in 0..K {
        let m = next(&mut sub).await;
        match deliver_once(m, |t, b| receiver.open(b, t, NOW)).await {
            Delivery::Executed { value, .. } => {
                seen.push(String::from_utf8(value.payload).unwrap())
            }
            other => panic!("unexpected delivery {other:?}"),
        }
    }
    tx_client.flush(STEP).await.unwrap();
    let status = tx_client.status();
    assert!(!status.session_present, "{status:?}");
    assert_eq!(status.republished_after_session_loss, K, "{status:?}");
    assert_eq!(
        seen,
        (0..K).map(|i| format!("pump-{i}")).collect::<Vec<_>>()
    );
    rx_client.disconnect(STEP).await.unwrap();
    tx_client.disconnect(STEP).await.unwrap();
    eprintln!(
        "{K} unacknowledged publishes re-sent after the broker lost the session: {:?}",
        started.elapsed()
    );
}

/// A subscription a client added at run time (a device that received the
/// key of a new group) is renewed, with the configured ones, when a
/// restarted broker has forgotten the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_added_at_run_time_is_renewed_on_a_new_session() {
    let test = "a_subscription_added_at_run_time_is_renewed_on_a_new_session";
    let Some(bin) = mosquitto_bin(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&bin, dir.path(), Persistence::Off);
    let url = broker.url();
    let scheme = TopicScheme::with_prefix(&unique("resub")).unwrap();
    let mut restart = || broker.restart();
    let outcome = tokio::time::timeout(
        LIMIT,
        subscriptions_added_at_run_time(&url, &scheme, Some(&mut restart)),
    )
    .await;
    assert!(outcome.is_ok(), "test exceeded its time limit");
}

/// A runtime subscription whose SUBACK never came — the broker froze with
/// the SUBSCRIBE in its socket and died — is confirmed by the next
/// session's subscription of every filter, and its messages arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_in_flight_when_the_broker_dies_is_confirmed_on_the_next_session() {
    let test = "a_subscription_in_flight_when_the_broker_dies_is_confirmed_on_the_next_session";
    let Some(bin) = mosquitto_bin(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&bin, dir.path(), Persistence::Off);
    let url = broker.url();
    let run = unique("inflight");
    let scheme = TopicScheme::with_prefix(&run).unwrap();
    let (own, doors) = (Group::new(b"own", 31), Group::new(b"doors", 32));
    let topic = scheme.group(&doors.id, GroupChannel::Command);
    let outcome = tokio::time::timeout(LIMIT, async {
        let (rx, mut sub) = connect(
            config(&url, &format!("{run}-rx")).with_subscription(scheme.group_filter(&own.id)),
        )
        .await;
        broker.signal("STOP");
        let waiting = {
            let rx = rx.clone();
            let filter = scheme.group_filter(&doors.id);
            tokio::spawn(async move { rx.subscribe(&[filter], STEP).await })
        };
        // The SUBSCRIBE goes out into the frozen broker's socket.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rx.status().subscribed_generation, 0, "{:?}", rx.status());
        tokio::task::block_in_place(|| {
            broker.crash();
            broker.spawn();
        });
        waiting.await.unwrap().unwrap();
        let status = rx.status();
        assert!(status.connections >= 2, "{status:?}");
        assert!(
            status.subscribed && status.subscribed_generation >= 1,
            "{status:?}"
        );
        let (tx, _tx_sub) = MqttClient::connect(config(&url, &format!("{run}-tx"))).unwrap();
        tx.wait_connected(STEP).await.unwrap();
        tx.publish(topic.clone(), doors.seal(1, &topic, b"unlock"))
            .await
            .unwrap();
        let m = next(&mut sub).await;
        assert_eq!(m.topic, topic);
        rx.disconnect(STEP).await.unwrap();
        tx.disconnect(STEP).await.unwrap();
    })
    .await;
    assert!(outcome.is_ok(), "test exceeded its time limit");
}
