//! LIST and GET of events. A LIST returns the replay window (what the bus still holds,
//! never older history) as an `EventList` or a Table, in pages (`limit`, `continue`) that
//! are consistent with the first page's resourceVersion, streamed as its client reads,
//! from a slot of its own among the LISTs in flight; a GET returns one event while the
//! window holds it. Items are cut out of each event's shared watch line, not re-encoded.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::registry::{Registration, Stop, Watches};
use super::{Query, ResourceVersionMatch};
use crate::bus::{At, Bus, Filter, ListError, ListRange, Published, Scope};
use crate::event::{API_GROUP, Event, Field, GROUP_VERSION};
use crate::metrics::ListGuard;
use crate::response::{self, Body, Chunk};
use crate::status::ApiError;
use crate::table::{Format, TABLE_TAIL};

/// What a continue token holds: where the next page starts, and the resourceVersion
/// the pages are consistent with (0: none, the token kube-apiserver calls inconsistent).
#[derive(Serialize, Deserialize)]
struct Continue {
    v: String,
    rv: u64,
    after: u64,
}

impl Continue {
    fn encode(rv: u64, after: u64) -> String {
        super::encode_continue(&Continue {
            v: GROUP_VERSION.to_owned(),
            rv,
            after,
        })
    }

    fn decode(token: &str) -> Result<Continue, ApiError> {
        let c: Continue = super::decode_continue(token)?;
        if c.v != GROUP_VERSION {
            return Err(ApiError::BadRequest(format!(
                "invalid continue token: unknown version {:?}",
                c.v
            )));
        }
        Ok(c)
    }
}

/// Which part of the window the query asks for, as kube-apiserver reads
/// `resourceVersion`, `resourceVersionMatch` and `continue`.
fn range(query: &Query) -> Result<ListRange, ApiError> {
    if let Some(token) = &query.continue_token {
        if query.resource_version.is_some_and(|rv| rv != 0) {
            return Err(ApiError::BadRequest(
                "specifying resource version is not allowed when using continue".into(),
            ));
        }
        let c = Continue::decode(token)?;
        return Ok(ListRange {
            after: c.after,
            after_must_be_kept: c.rv != 0,
            at: if c.rv == 0 { At::Now } else { At::Exact(c.rv) },
            limit: query.limit,
        });
    }
    let at = match (query.resource_version, &query.resource_version_match) {
        // "" and "0": whatever is there now.
        (None | Some(0), _) => At::Now,
        (Some(rv), Some(ResourceVersionMatch::Exact)) => At::Exact(rv),
        (Some(rv), _) => At::NotOlderThan(rv),
    };
    Ok(ListRange {
        at,
        limit: query.limit,
        ..ListRange::default()
    })
}

/// A LIST's place among those in flight (`--max-watchers`, `--max-watchers-per-user`
/// hold LISTs apart from watches, as kube-apiserver's `--max-requests-inflight` does),
/// taken before the window is read and held by its body until the last byte is taken,
/// the client goes, or the sweeper finds the client stopped reading.
pub struct InFlight {
    registration: Registration,
    pending: Pending,
}

/// What a LIST has still to write, and its place in the in-flight gauge, shared with the
/// sweeper, which drops both when it ends a LIST whose client stopped reading: a body no
/// longer polled is not dropped either while its connection lives, and would keep its
/// references to evicted events and its count.
#[derive(Clone)]
struct Pending(Arc<Mutex<Writing>>);

struct Writing {
    items: Option<std::vec::IntoIter<Arc<Published>>>,
    guard: Option<ListGuard>,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Writing> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Done, or ended: nothing more to write or to count.
    fn finish(&self) {
        let mut w = self.lock();
        w.items = None;
        w.guard = None;
    }
}

impl Stop for Pending {
    fn close(&self) {
        self.finish();
    }

    fn has_pending(&self) -> bool {
        self.lock().items.is_some()
    }
}

/// Take a slot for `user`'s LIST, counted by `guard` while it is written. A refusal
/// is logged as the router logs one, and is a 429.
pub fn enter(
    lists: &Watches,
    user: &str,
    resource: &str,
    namespace: &str,
    guard: ListGuard,
) -> Result<InFlight, ApiError> {
    let stalled = guard.stalled_counter();
    let pending = Pending(Arc::new(Mutex::new(Writing {
        items: None,
        guard: Some(guard),
    })));
    match lists.register(user, pending.clone(), stalled) {
        Ok(registration) => Ok(InFlight {
            registration,
            pending,
        }),
        Err(full) => Err(full.refuse(user, resource, namespace)),
    }
}

/// LIST the window's events that `scope` and the field selector select, as an
/// `EventList` or a Table written a frame at a time as the client reads: out of the
/// window's shared lines, so that a LIST holds its page's references and one frame, never
/// the whole body, however much the window holds.
/// `visible`: what this reader may see of what the scope selects (everything, unless
/// `--authorization-granularity=resource`).
pub fn list(
    bus: &Bus,
    scope: Scope,
    query: &Query,
    format: Option<Format>,
    visible: &dyn Fn(&Event) -> bool,
    slot: InFlight,
) -> Result<Response<Body>, ApiError> {
    let range = range(query)?;
    let filter = Filter {
        scope,
        selector: query.field_selector.clone(),
    };
    let page = bus
        .list_where(&filter, range, visible)
        .map_err(|e| match e {
            ListError::TooLarge { requested, current } => {
                ApiError::TooLargeResourceVersion { requested, current }
            }
            ListError::Expired(_) if query.continue_token.is_some() => ApiError::ContinueExpired {
                inconsistent_continue: Continue::encode(0, range.after),
            },
            ListError::Expired(_) => ApiError::ListExpired,
            ListError::Unavailable(down) => down.into(),
        })?;
    let continue_token = page
        .more
        .then(|| page.items.last())
        .flatten()
        .map(|last| Continue::encode(page.resource_version, last.resource_version));

    let mut head = Vec::with_capacity(256);
    match &format {
        Some(f) => f.write_table_head(
            &mut head,
            page.resource_version,
            continue_token.as_deref(),
            true,
        ),
        None => {
            head.extend_from_slice(br#"{"kind":"EventList","apiVersion":""#);
            head.extend_from_slice(GROUP_VERSION.as_bytes());
            head.extend_from_slice(br#"","metadata":{"resourceVersion":""#);
            head.extend_from_slice(itoa::Buffer::new().format(page.resource_version).as_bytes());
            head.push(b'"');
            if let Some(token) = &continue_token {
                head.extend_from_slice(br#","continue":"#);
                head.extend_from_slice(&serde_json::to_vec(token).unwrap_or_default());
            }
            head.extend_from_slice(br#"},"items":["#);
        }
    }
    slot.pending.lock().items = Some(page.items.into_iter());
    let body = ItemsBody {
        head: Some(Bytes::from(head)),
        format,
        slot,
        first: true,
        done: false,
    };
    let mut resp = Response::new(body.boxed_unsync());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// What a LIST body writes at most per frame, unless one item alone is larger.
const LIST_FRAME_BYTES: usize = 64 * 1024;

/// An `EventList` or a Table written as it is read: the head, then items or rows a frame
/// at a time, then the closing bytes. Each is cut out of its event's shared line.
struct ItemsBody {
    head: Option<Bytes>,
    /// `Some`: Table rows; `None`: `EventList` items.
    format: Option<Format>,
    slot: InFlight,
    first: bool,
    done: bool,
}

impl http_body::Body for ItemsBody {
    type Data = Chunk;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Chunk>, Self::Error>>> {
        let this = &mut *self;
        // Ended from outside: its client took nothing for the stall limit. The body ends
        // short of its closing bytes, which a client reads as a broken response.
        if this.done || !this.slot.registration.polled(Instant::now()) {
            this.done = true;
            return std::task::Poll::Ready(None);
        }
        let mut frame = match this.head.take() {
            Some(head) => BytesMut::from(&head[..]),
            None => BytesMut::new(),
        };
        let mut writing = this.slot.pending.lock();
        let Some(iter) = writing.items.as_mut() else {
            this.done = true;
            return std::task::Poll::Ready(None);
        };
        // The items this frame will hold, measured first: grown by doubling instead, the
        // frame was copied each time.
        let mut room = TABLE_TAIL.len();
        for p in iter.as_slice() {
            if frame.len() + room >= LIST_FRAME_BYTES {
                break;
            }
            room += 1 + match &this.format {
                Some(f) => f.row_len(p, false),
                None => p.object_len(false),
            };
        }
        frame.reserve(room);
        while frame.len() < LIST_FRAME_BYTES {
            let Some(p) = iter.next() else {
                frame.extend_from_slice(match this.format {
                    Some(_) => TABLE_TAIL,
                    None => b"]}",
                });
                // Nothing left to send: the sweeper leaves it be from here on, and it
                // counts as in flight no more.
                writing.items = None;
                writing.guard = None;
                this.done = true;
                break;
            };
            if !std::mem::replace(&mut this.first, false) {
                frame.extend_from_slice(b",");
            }
            match &this.format {
                Some(f) => f.write_row(&mut frame, &p, false),
                None => {
                    let (head, tail) = p.event.object_parts(false);
                    frame.extend_from_slice(head);
                    frame.extend_from_slice(p.digits());
                    frame.extend_from_slice(tail);
                }
            }
        }
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Chunk::Bytes(
            frame.freeze(),
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// GET one event by name (`<auditID>-<stage in lower case>`) while the window holds it;
/// the newest, should two share a name.
pub fn get(
    bus: &Bus,
    scope: Scope,
    resource: &'static str,
    name: &str,
    format: Option<Format>,
    visible: &dyn Fn(&Event) -> bool,
) -> Result<Response<Body>, ApiError> {
    let not_found = || ApiError::ObjectNotFound {
        group: API_GROUP,
        resource,
        name: name.to_owned(),
    };
    // Stages have no '-', audit IDs (UUIDs) do: the stage is after the last one.
    let (audit_id, stage) = name.rsplit_once('-').ok_or_else(not_found)?;
    let found = bus
        .find(|e| {
            e.audit_id() == audit_id
                && e.get(Field::Stage).eq_ignore_ascii_case(stage)
                && scope.matches(e)
                && visible(e)
        })
        .map_err(ApiError::from)?
        .ok_or_else(not_found)?;
    let mut out = Vec::with_capacity(found.wire_len(false) + 256);
    match format {
        Some(f) => f.write_table(
            &mut out,
            found.resource_version,
            None,
            true,
            std::slice::from_ref(&found),
        ),
        None => {
            let (head, tail) = found.event.object_parts(false);
            out.extend_from_slice(head);
            out.extend_from_slice(found.digits());
            out.extend_from_slice(tail);
        }
    }
    Ok(response::json(StatusCode::OK, out))
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_refuse_garbage() {
        let c = Continue::decode(&Continue::encode(7, 3)).unwrap();
        assert_eq!((c.rv, c.after), (7, 3));
        for bad in [
            "!!",
            "e30",
            &URL_SAFE_NO_PAD.encode(br#"{"v":"x","rv":1,"after":0}"#),
        ] {
            let e = Continue::decode(bad).err().unwrap();
            assert_eq!(e.code_reason().0, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn resource_version_semantics() {
        let q = |s: &str| range(&Query::parse(Some(s)).unwrap());
        assert_eq!(q("").unwrap().at, At::Now);
        assert_eq!(q("resourceVersion=0").unwrap().at, At::Now);
        assert_eq!(q("resourceVersion=5").unwrap().at, At::NotOlderThan(5));
        assert_eq!(
            q("resourceVersion=5&resourceVersionMatch=NotOlderThan")
                .unwrap()
                .at,
            At::NotOlderThan(5)
        );
        assert_eq!(
            q("resourceVersion=5&resourceVersionMatch=Exact")
                .unwrap()
                .at,
            At::Exact(5)
        );
        let token = Continue::encode(9, 4);
        let r = q(&format!("continue={token}&limit=3")).unwrap();
        assert_eq!(
            (r.after, r.after_must_be_kept, r.at, r.limit),
            (4, true, At::Exact(9), 3)
        );
        assert!(q(&format!("continue={token}&resourceVersion=0")).is_ok());
        assert!(q(&format!("continue={token}&resourceVersion=2")).is_err());
    }
}
