//! `--bus=nats`: each replica writes its share of every source's figures (what it counted
//! itself: its pushes, refusals and retries) to a JetStream key-value bucket, and sums
//! every replica's shares, so that every replica answers with the same figures.

use super::*;

impl Sources {
    /// This replica's share, as written to the bucket.
    pub(super) fn share_bytes(&self) -> Vec<u8> {
        let share = Share {
            v: SHARE_VERSION,
            sources: self.own(now_micros(), false),
        };
        serde_json::to_vec(&share).unwrap_or_default()
    }

    /// Another replica's share, read from the bucket (`None`: it was removed).
    pub(super) fn remote_share(&self, replica: &str, value: Option<&[u8]>) {
        if replica == self.inner.replica {
            return;
        }
        let mut remote = lock(&self.inner.remote);
        let Some(value) = value else {
            remote.remove(replica);
            return;
        };
        match serde_json::from_slice::<Share>(value) {
            Ok(share) if share.v == SHARE_VERSION => {
                let mut sources = share.sources;
                // Another replica keeps its own cap; a share that does not is cut to it
                // (the most recently heard kept), in one sort whatever its size.
                if sources.len() > MAX_SOURCES {
                    let mut by_recency: Vec<(String, Tally)> = sources.into_iter().collect();
                    by_recency.sort_by(|a, b| {
                        b.1.last_heard().cmp(&a.1.last_heard()).then(a.0.cmp(&b.0))
                    });
                    by_recency.truncate(MAX_SOURCES);
                    sources = by_recency.into_iter().collect();
                }
                remote.insert(replica.to_owned(), sources);
            }
            Ok(share) => {
                tracing::warn!(
                    replica,
                    version = share.v,
                    "a replica's source figures are of another format; left out"
                );
            }
            Err(e) => {
                tracing::warn!(replica, error = %e, "a replica's source figures do not parse; left out");
            }
        }
    }

    /// `--bus=nats`: write this replica's share to the bucket `bucket` whenever it
    /// changes (at most once a `TICK`, and at least every `SHARE_REFRESH`), and read
    /// every other replica's, until shutdown; through NATS outages (the figures then are
    /// those last read).
    pub fn share(&self, js: jetstream::Context, bucket: String, shutdown: CancellationToken) {
        let sources = self.clone();
        tokio::spawn(async move {
            tracing::info!(%bucket, replica = %sources.inner.replica, "sources: sharing this replica's figures through the NATS key-value bucket");
            loop {
                match sources.share_once(&js, &bucket, &shutdown).await {
                    Ok(()) => return,
                    Err(e) => {
                        sources.inner.meters.share_errors.inc();
                        tracing::warn!(%bucket, error = %e, "sources: the replicas' figures cannot be shared for now; retrying");
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(SHARE_RETRY) => {}
                }
            }
        });
    }

    async fn share_once(
        &self,
        js: &jetstream::Context,
        bucket: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), ShareError> {
        let (store, made) = open_bucket(js, bucket).await?;
        if made {
            // A new bucket (NATS lost the old one): the shares read from it are gone.
            lock(&self.inner.remote).clear();
        }
        let mut entries = store
            .watch_with_history(">")
            .await
            .map_err(|e| ShareError::Watch(e.to_string()))?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(Vec<u8>, tokio::time::Instant)> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => {
                        let value = (entry.operation == kv::Operation::Put).then_some(&entry.value[..]);
                        self.remote_share(&entry.key, value);
                    }
                    Some(Err(e)) => return Err(ShareError::Watch(e.to_string())),
                    None => return Err(ShareError::Watch("the watch ended".into())),
                },
                _ = tick.tick() => {
                    let share = self.share_bytes();
                    let due = last.as_ref().is_none_or(|(bytes, at)| *bytes != share || at.elapsed() >= SHARE_REFRESH);
                    if due {
                        store
                            .put(&self.inner.replica, share.clone().into())
                            .await
                            .map_err(|e| ShareError::Put(e.to_string()))?;
                        last = Some((share, tokio::time::Instant::now()));
                    }
                }
            }
        }
    }
}

/// Why sharing stopped for now.
#[derive(Debug, thiserror::Error)]
enum ShareError {
    #[error("the key-value bucket: {0}")]
    Bucket(String),
    #[error("watching the key-value bucket: {0}")]
    Watch(String),
    #[error("writing this replica's figures: {0}")]
    Put(String),
}

/// The bucket, made if missing (in memory, like the stream, and with as many copies:
/// three on a NATS cluster that has them); `true`: made now.
///
/// Made as the stream a key-value bucket is (`KV_<bucket>` on `$KV.<bucket>.>`, one value
/// a key), not with `create_key_value`: that first reads the account's JetStream info,
/// whose NATS 2.9 form the client cannot parse.
async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<(kv::Store, bool), ShareError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok((store, false));
    }
    let config = |replicas| jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(
            "kube-audit-stream: each replica's per-source figures (sources.audit.k8s.io)"
                .to_owned(),
        ),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: SHARE_MAX_AGE,
        max_message_size: SHARE_MAX_BYTES,
        storage: jetstream::stream::StorageType::Memory,
        num_replicas: replicas,
        discard: jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    };
    let clustered = js.client().server_info().cluster.is_some();
    let made = match clustered {
        true => match js.create_stream(config(3)).await {
            Ok(s) => Ok(s),
            Err(_) => js.create_stream(config(1)).await,
        },
        false => js.create_stream(config(1)).await,
    };
    let made = made.map_err(|e| e.to_string());
    // Made now, or by another replica first.
    match js.get_key_value(bucket).await {
        Ok(store) => Ok((store, made.is_ok())),
        Err(e) => Err(ShareError::Bucket(
            made.err().unwrap_or_else(|| e.to_string()),
        )),
    }
}

/// The bucket's name for the stream `stream`: what a bucket name may hold of it.
pub fn bucket_name(stream: &str) -> String {
    let clean: String = stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}_sources")
}

/// This process's key in the bucket: its host name (the pod's) and a random part, so
/// that a restarted replica's share is a new one and the old one's counts still count.
pub(super) fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_".contains(*c))
        .take(200)
        .collect();
    let host = if host.is_empty() { "replica" } else { &host };
    format!("{host}-{:08x}", fastrand::u32(..))
}
