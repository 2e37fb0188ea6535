//! etcd's Watch service: many watches over one stream, each following a
//! key range from a revision through the replica's watch hub.
//!
//! A watch the hub drops (it fell behind, or the replica installed a
//! snapshot) resumes by itself from the round after the last one it
//! delivered, so the client sees no gap and no repeat; if that round is no
//! longer kept, it is canceled with `compact_revision`, as etcd does.

use super::*;
use crate::driver::{WatchEvent, WatchRequest};
use paxlog_kv::KeyRange;
use pb::watch_create_request::FilterType;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Streaming};

/// Responses queued for one client stream.
const STREAM_QUEUE: usize = 256;
/// Events in one response, at most.
const MAX_EVENTS_PER_RESPONSE: usize = 1000;
/// Watches one stream may hold.
const MAX_WATCHES_PER_STREAM: usize = 1024;
/// How often a watch that asked for progress notifications gets one when
/// no event came (etcd's default is 10 minutes; clients resume from it).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

pub struct WatchApi(pub EtcdApi);

type Outbound = mpsc::Sender<Result<pb::WatchResponse, Status>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchApi {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let session = Session {
            api: self.0.clone(),
            tx,
            watches: HashMap::new(),
            next_id: 0,
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One client stream and its watches.
struct Session {
    api: EtcdApi,
    tx: Outbound,
    watches: HashMap<i64, (AbortHandle, mpsc::Sender<()>)>,
    next_id: i64,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) {
        use pb::watch_request::RequestUnion;
        loop {
            let message = tokio::select! {
                message = inbound.message() => message,
                () = self.tx.closed() => break,
            };
            let request = match message {
                Ok(Some(request)) => request,
                Ok(None) | Err(_) => break,
            };
            let sent = match request.request_union {
                Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
                Some(RequestUnion::CancelRequest(cancel)) => self.cancel(cancel.watch_id).await,
                Some(RequestUnion::ProgressRequest(_)) => {
                    for (_, progress) in self.watches.values() {
                        let _ = progress.try_send(());
                    }
                    if self.watches.is_empty() {
                        self.progress_without_watches().await
                    } else {
                        true
                    }
                }
                None => true,
            };
            if !sent {
                break;
            }
            self.watches.retain(|_, (task, _)| !task.is_finished());
        }
        for (task, _) in self.watches.values() {
            task.abort();
        }
    }

    async fn send(&self, response: pb::WatchResponse) -> bool {
        self.tx.send(Ok(response)).await.is_ok()
    }

    async fn progress_without_watches(&self) -> bool {
        let revision = self.api.state.metrics().published.snapshot().applied_round;
        self.send(pb::WatchResponse {
            header: Some(self.api.header(revision)),
            watch_id: -1,
            ..Default::default()
        })
        .await
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> bool {
        let watch_id = if create.watch_id != 0 {
            create.watch_id
        } else {
            // Ids go up and are not reused within a stream, as etcd's
            // (a late response of a canceled watch never looks like a new
            // watch's).
            while self.watches.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let revision = self.api.state.metrics().published.snapshot().applied_round;
        let refuse = |reason: String| pb::WatchResponse {
            header: Some(self.api.header(revision)),
            watch_id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        if self.watches.contains_key(&watch_id) {
            return self
                .send(refuse("etcdserver: duplicate watch id".into()))
                .await;
        }
        if self.watches.len() >= MAX_WATCHES_PER_STREAM {
            return self
                .send(refuse(format!(
                    "paxlog: at most {MAX_WATCHES_PER_STREAM} watches per stream"
                )))
                .await;
        }
        let range = match kv::key_range(&create.key, &create.range_end) {
            Ok(range) => range,
            Err(status) => return self.send(refuse(status.message().to_string())).await,
        };
        // Revision r is written at round r - 1.
        let from_round = u64::try_from(create.start_revision)
            .ok()
            .filter(|r| *r > 0)
            .map(|r| r - 1);
        // A watch "from now" starts at the revision its `created` response
        // reports, so no change after that revision is missed (the history
        // replays what the driver applied since).
        let since_created = self.subscribe(&range, Some(from_round.unwrap_or(revision)));
        let subscribed = match (from_round, since_created.await) {
            // The history restarted past it (a snapshot came): from now.
            (None, Err(Subscribe::Compacted(_))) => self.subscribe(&range, None).await,
            (_, answer) => answer,
        };
        let receiver = match subscribed {
            Ok(receiver) => receiver,
            Err(Subscribe::Compacted(first_kept_round)) => {
                let mut response =
                    refuse("etcdserver: mvcc: required revision has been compacted".to_string());
                response.compact_revision = revision_i64(revision_of_round(first_kept_round));
                return self.send(response).await;
            }
            Err(Subscribe::Failed(status)) => {
                return self.send(refuse(status.message().to_string())).await
            }
        };
        if !self
            .send(pb::WatchResponse {
                header: Some(self.api.header(revision)),
                watch_id,
                created: true,
                ..Default::default()
            })
            .await
        {
            return false;
        }
        let (progress_tx, progress_rx) = mpsc::channel(1);
        let watch = Watch {
            api: self.api.clone(),
            tx: self.tx.clone(),
            watch_id,
            range,
            from_round,
            created_round: revision,
            delivered: None,
            no_put: create.filters.contains(&(FilterType::Noput as i32)),
            no_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
        };
        let task = tokio::spawn(watch.run(receiver, progress_rx));
        self.watches
            .insert(watch_id, (task.abort_handle(), progress_tx));
        true
    }

    async fn cancel(&mut self, watch_id: i64) -> bool {
        let Some((task, _)) = self.watches.remove(&watch_id) else {
            return true;
        };
        task.abort();
        let revision = self.api.state.metrics().published.snapshot().applied_round;
        self.send(pb::WatchResponse {
            header: Some(self.api.header(revision)),
            watch_id,
            canceled: true,
            ..Default::default()
        })
        .await
    }

    async fn subscribe(
        &self,
        range: &KeyRange,
        from_round: Option<u64>,
    ) -> Result<mpsc::Receiver<WatchEvent>, Subscribe> {
        self.api.subscribe(range, from_round).await
    }
}

enum Subscribe {
    /// The first round still kept.
    Compacted(u64),
    Failed(Status),
}

impl EtcdApi {
    async fn subscribe(
        &self,
        range: &KeyRange,
        from_round: Option<u64>,
    ) -> Result<mpsc::Receiver<WatchEvent>, Subscribe> {
        let (reply, answer) = oneshot::channel();
        let input = DriverInput::Watch(WatchRequest {
            range: range.clone(),
            from_round,
            reply,
        });
        match self.state.call(input, answer).await {
            Ok(receiver) => Ok(receiver),
            Err(DriverError::Gone(_)) => {
                let first_kept = self
                    .inspect(Consistency::Local, |view| {
                        Ok(view.history.first_kept_round())
                    })
                    .await
                    .map_err(Subscribe::Failed)?;
                Err(Subscribe::Compacted(first_kept))
            }
            Err(error) => Err(Subscribe::Failed(status_of(error))),
        }
    }
}

/// One watch: forwards the hub's events for its range as etcd responses.
struct Watch {
    api: EtcdApi,
    tx: Outbound,
    watch_id: i64,
    range: KeyRange,
    /// Events before this round are not for this watch (a watch from a
    /// future revision hears the rounds before it too).
    from_round: Option<u64>,
    /// The replica's current round when the watch was created (its
    /// `created` response said so): a watch "from now" that must resume
    /// before it sent anything resumes from here.
    created_round: u64,
    /// The last round this watch sent events of, and the keys it sent at
    /// that round (a round changes a key at most once; a watch the hub
    /// dropped mid-round resumes at that round and skips these).
    delivered: Option<(u64, HashSet<String>)>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
}

impl Watch {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<WatchEvent>,
        mut progress: mpsc::Receiver<()>,
    ) {
        let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
        ticker.tick().await;
        let mut sent_since_tick = false;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        if !self.forward(event, &mut events).await {
                            return;
                        }
                        sent_since_tick = true;
                    }
                    None => match self.resume().await {
                        Some(receiver) => events = receiver,
                        None => return,
                    },
                },
                _ = ticker.tick(), if self.progress_notify => {
                    if !sent_since_tick && !self.progress(&mut events).await {
                        return;
                    }
                    sent_since_tick = false;
                }
                asked = progress.recv() => {
                    if asked.is_none() || !self.progress(&mut events).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sends `first` and the events queued behind it, in one response.
    async fn forward(
        &mut self,
        first: WatchEvent,
        events: &mut mpsc::Receiver<WatchEvent>,
    ) -> bool {
        let mut batch = vec![first];
        while batch.len() < MAX_EVENTS_PER_RESPONSE {
            match events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        self.send_events(batch, None).await
    }

    async fn send_events(&mut self, batch: Vec<WatchEvent>, at_revision: Option<u64>) -> bool {
        let mut last_round = None;
        let mut out = Vec::with_capacity(batch.len());
        for event in batch {
            let seen = self.delivered.as_ref().is_some_and(|(round, keys)| {
                event.round < *round || (event.round == *round && keys.contains(&event.key))
            });
            if seen
                || self.from_round.is_some_and(|from| event.round < from)
                || !self.range.contains(&event.key)
            {
                continue;
            }
            last_round = Some(event.round);
            match &mut self.delivered {
                Some((round, keys)) if *round == event.round => {
                    keys.insert(event.key.clone());
                }
                delivered => *delivered = Some((event.round, HashSet::from([event.key.clone()]))),
            }
            if let Some(e) = self.event(event) {
                out.push(e);
            }
        }
        if out.is_empty() && at_revision.is_none() {
            return true;
        }
        let published = self.api.state.metrics().published.snapshot().applied_round;
        let revision =
            at_revision.unwrap_or_else(|| published.max(last_round.map_or(0, revision_of_round)));
        let response = pb::WatchResponse {
            header: Some(self.api.header(revision)),
            watch_id: self.watch_id,
            events: out,
            ..Default::default()
        };
        self.tx.send(Ok(response)).await.is_ok()
    }

    fn event(&self, event: WatchEvent) -> Option<mvccpb::Event> {
        use mvccpb::event::EventType;
        let revision = revision_of_round(event.round);
        let prev_kv = if self.prev_kv {
            event
                .previous
                .as_ref()
                .map(|p| key_value(&event.key, Some(&p.value), p.meta, p.lease))
        } else {
            None
        };
        match (&event.value, event.meta) {
            (Some(value), Some(meta)) => (!self.no_put).then(|| mvccpb::Event {
                r#type: EventType::Put as i32,
                kv: Some(key_value(&event.key, Some(value), meta, event.lease)),
                prev_kv,
            }),
            _ => (!self.no_delete).then(|| mvccpb::Event {
                r#type: EventType::Delete as i32,
                kv: Some(mvccpb::KeyValue {
                    key: event.key.as_bytes().to_vec(),
                    mod_revision: revision_i64(revision),
                    ..Default::default()
                }),
                prev_kv,
            }),
        }
    }

    /// A progress notification: every event up to the replica's current
    /// revision is sent first (the hub queued them before the driver
    /// answered the revision), so the header's revision is a safe point to
    /// resume from.
    async fn progress(&mut self, events: &mut mpsc::Receiver<WatchEvent>) -> bool {
        let Ok(current) = self
            .api
            .inspect(Consistency::Local, |view| Ok(view.kv.applied_upto().0))
            .await
        else {
            return true;
        };
        let mut batch = Vec::new();
        while let Ok(event) = events.try_recv() {
            batch.push(event);
        }
        let delivered = self
            .delivered
            .as_ref()
            .map_or(0, |(r, _)| revision_of_round(*r));
        let revision = current.max(delivered);
        self.send_events(batch, Some(revision)).await
    }

    /// The hub dropped this watch: subscribe again after the last round
    /// delivered, or cancel the watch if that round is gone.
    async fn resume(&mut self) -> Option<mpsc::Receiver<WatchEvent>> {
        let from = self
            .delivered
            .as_ref()
            .map(|(r, _)| *r)
            .or(self.from_round)
            .unwrap_or(self.created_round);
        match self.api.subscribe(&self.range, Some(from)).await {
            Ok(receiver) => Some(receiver),
            Err(reason) => {
                let (compact_revision, cancel_reason) = match reason {
                    Subscribe::Compacted(first_kept) => (
                        revision_i64(revision_of_round(first_kept)),
                        "etcdserver: mvcc: required revision has been compacted".to_string(),
                    ),
                    Subscribe::Failed(status) => (0, status.message().to_string()),
                };
                let revision = self.api.state.metrics().published.snapshot().applied_round;
                let _ = self
                    .tx
                    .send(Ok(pb::WatchResponse {
                        header: Some(self.api.header(revision)),
                        watch_id: self.watch_id,
                        canceled: true,
                        compact_revision,
                        cancel_reason,
                        ..Default::default()
                    }))
                    .await;
                None
            }
        }
    }
}
