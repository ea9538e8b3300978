//! Following the stream into the local bus: every replica reads every message in order
//! from where its window starts, gives each event the resourceVersion its position
//! implies, and marks the bus down (and up again) with the stream's reachability.

use super::*;

/// Why following the stream stopped. The bus is down for this reason (the log's and the
/// 503s' words) until the stream is read again.
#[derive(Debug, thiserror::Error)]
pub(super) enum Lost {
    #[error("the JetStream stream {stream:?} on {url}: {source}")]
    Find {
        stream: String,
        url: String,
        #[source]
        source: FindError,
    },
    #[error("the JetStream stream {stream:?}: {source}")]
    Info {
        stream: String,
        #[source]
        source: stream::InfoError,
    },
    #[error("reading the stream {stream:?}: {source}")]
    Consumer {
        stream: String,
        #[source]
        source: stream::ConsumerError,
    },
    #[error("reading the stream {stream:?}: {source}")]
    Messages {
        stream: String,
        #[source]
        source: consumer::StreamError,
    },
    #[error("reading the stream {stream:?}: {source}")]
    Read {
        stream: String,
        #[source]
        source: consumer::pull::OrderedError,
    },
    #[error("the stream {stream:?} ended")]
    Ended { stream: String },
    #[error("a message without its stream sequence: {0}")]
    NoSequence(#[source] async_nats::Error),
    #[error("lost the connection to NATS at {url}")]
    Disconnected { url: String },
}

/// Why the stream could not be found or made.
#[derive(Debug, thiserror::Error)]
pub(super) enum FindError {
    #[error(transparent)]
    Get(jetstream::context::GetStreamError),
    #[error(transparent)]
    Create(jetstream::context::CreateStreamError),
}

impl Inner {
    /// Follow the stream into the bus until shutdown, through every outage.
    pub(super) async fn follow(
        self: Arc<Self>,
        mut connected: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let mut position = None;
        loop {
            if !*connected.borrow_and_update() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = connected.changed() => if changed.is_err() { return },
                }
                continue;
            }
            match self
                .follow_once(&mut position, &mut connected, &shutdown)
                .await
            {
                Ok(()) => return,
                Err(lost) => self.set_down(lost.to_string()),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Find (or make) the stream, and read it from `position` on until the connection
    /// is lost (`Err`, why) or the server shuts down (`Ok`).
    pub(super) async fn follow_once(
        &self,
        position: &mut Option<Position>,
        connected: &mut watch::Receiver<bool>,
        shutdown: &CancellationToken,
    ) -> Result<(), Lost> {
        let mut stream = self.stream().await.map_err(|source| Lost::Find {
            stream: self.stream.clone(),
            url: self.url.clone(),
            source,
        })?;
        let info = stream.info().await.map_err(|source| Lost::Info {
            stream: self.stream.clone(),
            source,
        })?;
        let created = bus::micros_since_epoch(info.created.unix_timestamp_nanos());
        let (first, last) = (info.state.first_sequence.max(1), info.state.last_sequence);
        let pos = match position {
            Some(p) if p.created == created && p.next >= first => p,
            _ => {
                // A new stream (first start, or NATS lost the old one), or one that moved
                // past what this replica read: what came before is gone here too.
                if position.is_some() {
                    tracing::warn!(
                        stream = %self.stream,
                        "the stream was made anew or moved on while away; the window starts over"
                    );
                }
                self.bus.reset(resource_version(created, first, 0) - 1);
                position.insert(Position {
                    created,
                    next: first,
                })
            }
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: pos.next,
                },
                ..Default::default()
            })
            .await
            .map_err(|source| Lost::Consumer {
                stream: self.stream.clone(),
                source,
            })?;
        let mut messages = consumer.messages().await.map_err(|source| Lost::Messages {
            stream: self.stream.clone(),
            source,
        })?;
        if pos.next > last {
            self.set_up();
        }
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = connected.changed() => {
                    if changed.is_err() || !*connected.borrow_and_update() {
                        return Err(Lost::Disconnected {
                            url: self.url.clone(),
                        });
                    }
                    continue;
                }
                message = messages.next() => message,
            };
            let message = match message {
                Some(Ok(m)) => m,
                Some(Err(source)) => {
                    return Err(Lost::Read {
                        stream: self.stream.clone(),
                        source,
                    });
                }
                None => {
                    return Err(Lost::Ended {
                        stream: self.stream.clone(),
                    });
                }
            };
            let seq = message.info().map_err(Lost::NoSequence)?.stream_sequence;
            if seq > pos.next {
                // Messages left the stream before this replica read them: a watch from
                // before them must be told it lost events, so the window starts over.
                tracing::warn!(
                    missed = seq - pos.next,
                    "this replica fell behind the whole stream; the window starts over"
                );
                self.metrics.gaps.inc();
                self.bus.reset(resource_version(created, seq, 0) - 1);
            }
            pos.next = pos.next.max(seq + 1);
            self.apply(created, seq, &message.payload);
            if seq >= last && self.bus.down().is_some() {
                self.set_up();
            }
        }
    }

    /// The stream, made if missing: in memory, sized like the window, with the retry
    /// window for duplicates.
    pub(super) async fn stream(&self) -> Result<stream::Stream, FindError> {
        match self.js.get_stream(&self.stream).await {
            Ok(s) => {
                if s.cached_info().config.storage != stream::StorageType::Memory {
                    tracing::warn!(stream = %self.stream, "the stream is not in memory storage: events reach NATS's disk");
                }
                return Ok(s);
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {}
            Err(e) => return Err(FindError::Get(e)),
        }
        let (events, bytes) = self.window;
        let config = |replicas| stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.subject.clone()],
            storage: stream::StorageType::Memory,
            max_messages: i64::try_from(events).unwrap_or(i64::MAX),
            max_bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::Old,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        };
        // Replicas follow the NATS deployment: three on a cluster (one if it has fewer
        // JetStream servers), one on a single server.
        let clustered = self.client.server_info().cluster.is_some();
        let made = match clustered {
            true => match self.js.create_stream(config(3)).await {
                Ok(s) => Ok(s),
                Err(e) => {
                    tracing::info!(stream = %self.stream, error = %e, "could not make the JetStream stream with 3 replicas; trying 1");
                    self.js.create_stream(config(1)).await
                }
            },
            false => self.js.create_stream(config(1)).await,
        };
        match made {
            Ok(s) => {
                tracing::info!(stream = %self.stream, "made the JetStream stream");
                Ok(s)
            }
            Err(created) => match self.js.get_stream(&self.stream).await {
                // Another replica made it first.
                Ok(s) => Ok(s),
                // Made by no one: why making it failed is the reason.
                Err(e) => {
                    tracing::debug!(stream = %self.stream, error = %e, "the JetStream stream is still missing after making it failed");
                    Err(FindError::Create(created))
                }
            },
        }
    }

    /// Put one message's events on the local bus at their resourceVersions.
    pub(super) fn apply(&self, created: u64, seq: u64, payload: &Bytes) {
        match decode_message(payload) {
            Ok(events) => {
                self.bus
                    .publish_at(resource_version(created, seq, 0), events);
            }
            Err(e) => {
                tracing::error!(seq, error = %e, "a message of the stream is not a batch of events; skipped");
                self.metrics.malformed.inc();
            }
        }
    }
}

/// Where a replica is in the stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Position {
    created: u64,
    next: u64,
}

/// A message's events, checked.
pub(super) fn decode_message(payload: &Bytes) -> Result<Vec<Event>, crate::event::WireError> {
    if payload.first() != Some(&WIRE_VERSION) {
        return Err(crate::event::WireError::new("unknown message format"));
    }
    if payload.len() == 1 {
        return Err(crate::event::WireError::new("a message without events"));
    }
    Event::decode_records(payload, 1, MAX_EVENTS_PER_MESSAGE)
}
