//! `WatchProduct`: the snapshot, then live changes over the hub of [`crate::watch`].

use std::collections::VecDeque;
use std::pin::Pin;

use futures::Stream;
use prost::Message;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::watch_product_response::Change;
use storemesh_runtime::ServiceError;
use storemesh_runtime::auth::caller;
use storemesh_runtime::error::Violations;
use tonic::{Request, Response, Status};

use super::{CatalogApi, product_not_found};
use crate::authz;
use crate::model::{now_ms, timestamp};
use crate::urls::ImageUrls;
use crate::validate::check_id;
use crate::watch::{EndReason, Subscription};

pub(super) type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchProductResponse, Status>> + Send>>;

/// One `WatchProduct` stream: the snapshot, then live changes; see [`crate::watch`].
struct WatchState {
    snapshot: VecDeque<pb::WatchProductResponse>,
    subscription: Subscription,
    /// The product change number already reflected in what was sent.
    last_change: u64,
    sequence: u64,
    finished: bool,
    urls: ImageUrls,
}

impl WatchState {
    /// Numbers `message` for this stream and adds image URLs (changes are published without
    /// them: they are output-only, see [`crate::urls`]).
    fn numbered(&mut self, mut message: pb::WatchProductResponse) -> pb::WatchProductResponse {
        self.sequence += 1;
        message.sequence = self.sequence;
        self.urls.decorate_change(&mut message);
        message
    }

    async fn next(&mut self) -> Option<Result<pb::WatchProductResponse, Status>> {
        if self.finished {
            return None;
        }
        if let Some(message) = self.snapshot.pop_front() {
            return Some(Ok(self.numbered(message)));
        }
        loop {
            let delivery = match self.subscription.next().await {
                Ok(delivery) => delivery,
                Err(reason) => {
                    self.finished = true;
                    return Some(Err(match reason {
                        EndReason::Overflow => Status::aborted(
                            "the watcher fell too far behind and changes were dropped; watch again with send_initial",
                        ),
                        EndReason::FeedLost => Status::unavailable(
                            "the change feed was lost; watch again with send_initial",
                        ),
                        EndReason::ShuttingDown => Status::unavailable(
                            "the server is shutting down; watch again with send_initial",
                        ),
                    }));
                }
            };
            if delivery.change <= self.last_change {
                continue; // already part of the snapshot
            }
            if delivery.change != self.last_change + 1 {
                self.finished = true;
                tracing::warn!(
                    expected = self.last_change + 1,
                    got = delivery.change,
                    "gap in the change feed"
                );
                return Some(Err(Status::unavailable(
                    "the change feed lost changes; watch again with send_initial",
                )));
            }
            self.last_change = delivery.change;
            let message = match pb::WatchProductResponse::decode(delivery.payload.as_slice()) {
                Ok(message) => message,
                Err(error) => {
                    self.finished = true;
                    return Some(Err(ServiceError::internal(error).into()));
                }
            };
            if matches!(message.change, Some(Change::ProductDeletedId(_))) {
                // The last message; the stream then ends with OK.
                self.finished = true;
            }
            return Some(Ok(self.numbered(message)));
        }
    }
}

pub(super) async fn watch_product(
    api: &CatalogApi,
    request: Request<pb::WatchProductRequest>,
) -> Result<Response<WatchStream>, Status> {
    let identity = caller(&request)?;
    authz::require_reader(identity)?;
    let subject = identity.subject.clone();
    let request = request.into_inner();
    let mut violations = Violations::new();
    check_id(&mut violations, "product_id", &request.product_id);
    violations.into_result()?;
    // Register first, then read: see `crate::watch` for why nothing falls in between.
    let subscription = api.hub.subscribe(
        &request.product_id,
        api.watch_buffer,
        &subject,
        api.max_watch_streams_per_identity,
    )?;
    let snapshot = api
        .store
        .snapshot(&request.product_id, request.send_initial)
        .await?
        .ok_or_else(|| product_not_found(&request.product_id))?;
    let mut messages = VecDeque::new();
    if request.send_initial {
        let now = now_ms();
        let snapshot_message = |change: Change| pb::WatchProductResponse {
            change: Some(change),
            sequence: 0,
            time: Some(timestamp(now)),
        };
        messages.push_back(snapshot_message(Change::ProductUpdated(
            snapshot.product.to_proto(),
        )));
        for image in &snapshot.images {
            messages.push_back(snapshot_message(Change::ImageUpdated(image.to_proto())));
        }
    }
    tracing::debug!(product = %request.product_id, send_initial = request.send_initial, "watch started");
    let state = WatchState {
        snapshot: messages,
        subscription,
        last_change: snapshot.changes,
        sequence: 0,
        finished: false,
        urls: api.urls.clone(),
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    });
    Ok(Response::new(Box::pin(stream)))
}
