//! NATS for tests (declared by tests/bus.rs only: the other test binaries share `common`
//! without a NATS client): the private servers of `zastava_testing::nats`, and reading a stream
//! back the way a consumer would — a durable pull consumer, every message acknowledged.

use std::{
    io::Read as _,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt as _;
use serde_json::Value;

pub use zastava_testing::nats::{Auth, Cluster, Options};

/// One message of the stream: a batch as the observer published it.
#[derive(Clone, Debug)]
pub struct Stored {
    pub sequence: u64,
    pub subject: String,
    /// `Nats-Msg-Id`.
    pub msg_id: String,
    pub content_encoding: Option<String>,
    pub schema_version: Option<String>,
    /// `Zastava-Events`: the batch's edge occurrences.
    pub events_header: u64,
    /// The batch envelope, decoded.
    pub batch: Value,
}

impl Stored {
    pub fn events(&self) -> Vec<Value> {
        self.batch["events"].as_array().cloned().unwrap_or_default()
    }
}

/// A gzip-encoded JSON body.
pub fn gunzip_json(body: &[u8]) -> Value {
    let mut json = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut json)
        .expect("the body is gzip");
    serde_json::from_str(&json).expect("the body is JSON")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// How the test connects: the servers' credentials, and the CA for TLS servers.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub auth: Auth,
    pub ca: Option<std::path::PathBuf>,
}

impl From<&Auth> for Access {
    fn from(auth: &Auth) -> Self {
        Access {
            auth: auth.clone(),
            ca: None,
        }
    }
}

async fn connect(urls: &[String], access: impl Into<Access>) -> async_nats::Client {
    let access = access.into();
    let mut options = match &access.auth {
        Auth::None => async_nats::ConnectOptions::new(),
        Auth::UserPassword(u, p) => {
            async_nats::ConnectOptions::with_user_and_password(u.clone(), p.clone())
        }
        Auth::Token(t) => async_nats::ConnectOptions::with_token(t.clone()),
    };
    if let Some(ca) = access.ca {
        options = options.add_root_certificates(ca).require_tls(true);
    }
    let addrs: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse().unwrap()).collect();
    options
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs)
        .await
        .expect("the test connects to NATS")
}

/// Reads every message of `stream` with a durable pull consumer named `durable`.
pub fn read_stream(
    urls: &[String],
    access: impl Into<Access>,
    stream: &str,
    durable: &str,
) -> Vec<Stored> {
    runtime().block_on(async {
        let client = connect(urls, access).await;
        let js = jetstream::new(client);
        let stream = js.get_stream(stream).await.expect("the stream exists");
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.to_owned()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ..pull::Config::default()
                },
            )
            .await
            .expect("a durable consumer");
        let mut stored = Vec::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(500)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .expect("fetch");
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.expect("a message");
                let info = message.info().expect("a JetStream message");
                let sequence = info.stream_sequence;
                let header = |name: &str| {
                    message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_owned())
                };
                stored.push(Stored {
                    sequence,
                    subject: message.subject.to_string(),
                    msg_id: header("Nats-Msg-Id").unwrap_or_default(),
                    content_encoding: header("Content-Encoding"),
                    schema_version: header("Zastava-Schema-Version"),
                    events_header: header("Zastava-Events")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    batch: gunzip_json(&message.payload),
                });
                message.ack().await.expect("ack");
                got += 1;
            }
            if got == 0 {
                break;
            }
        }
        stored
    })
}

/// The stream's information (config, state, cluster).
///
/// Right after a node dies the cluster may still be electing a meta or stream leader, and
/// JetStream API requests time out or answer "temporarily unavailable" until it has one;
/// an operator's `nats stream info` would be retried, and so is this, for up to 30 s.
pub fn stream_info(urls: &[String], access: impl Into<Access>, name: &str) -> stream::Info {
    let access = access.into();
    runtime().block_on(async {
        let js = jetstream::new(connect(urls, access).await);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let error = match js.get_stream(name).await {
                Ok(mut stream) => match stream.info().await {
                    Ok(info) => return info.clone(),
                    Err(e) => format!("stream info: {e:?}"),
                },
                Err(e) => format!("the stream exists: {e:?}"),
            };
            assert!(
                Instant::now() < deadline,
                "the cluster answered no stream info within 30 s: {error}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// Creates a stream as an operator would, before the observer starts.
pub fn create_stream(urls: &[String], access: impl Into<Access>, config: stream::Config) {
    runtime().block_on(async {
        let js = jetstream::new(connect(urls, access).await);
        js.create_stream(config).await.expect("create the stream");
    });
}
