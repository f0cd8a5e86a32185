//! Change events (`storemesh.events.v1.Event`) and their Redis stream encoding.
//!
//! Each stream entry has the fields the contract names: `event` (the protobuf-encoded `Event`,
//! authoritative), `id`, `type` (the `EventType` value name) and `key`. Entries are appended by
//! the same Redis script that commits the change (see `store`), so an event exists exactly
//! when its change was committed.

use prost::Message;
use storemesh_proto::events::v1 as pb;
use storemesh_proto::storage::v1::ObjectInfo;

/// `Event.source` of storage events.
pub const SOURCE: &str = "storemesh.storage";

/// The W3C trace context of the current span (`traceparent`, `tracestate`); empty strings when
/// the request is not traced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub parent: String,
    pub state: String,
}

impl TraceContext {
    pub fn current() -> Self {
        let mut metadata = tonic::metadata::MetadataMap::new();
        storemesh_runtime::telemetry::inject_trace_context(&mut metadata);
        let get = |name: &str| {
            metadata
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            parent: get("traceparent"),
            state: get("tracestate"),
        }
    }
}

/// One event ready to append: the fields of its stream entry.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: String,
    pub type_name: &'static str,
    pub key: String,
    pub encoded: Vec<u8>,
}

impl Outgoing {
    fn new(event: &pb::Event) -> Self {
        Self {
            id: event.id.clone(),
            type_name: event.r#type().as_str_name(),
            key: event.subject.clone(),
            encoded: event.encode_to_vec(),
        }
    }
}

pub use storemesh_runtime::time::now_timestamp;

fn envelope(
    kind: pb::EventType,
    key: &str,
    time: prost_types::Timestamp,
    trace: &TraceContext,
    data: pb::event::Data,
) -> pb::Event {
    pb::Event {
        id: ulid::Ulid::new().to_string(),
        r#type: kind.into(),
        source: SOURCE.into(),
        subject: key.to_owned(),
        time: Some(time),
        trace_parent: trace.parent.clone(),
        trace_state: trace.state.clone(),
        data: Some(data),
    }
}

/// The event of a committed object version; its time is the version's create time.
pub fn created(info: &ObjectInfo, trace: &TraceContext) -> Outgoing {
    let data = pb::event::Data::ObjectCreated(pb::ObjectCreated {
        key: info.key.clone(),
        size_bytes: info.size_bytes,
        sha256: info.sha256.clone(),
        content_type: info.content_type.clone(),
        metadata: info.metadata.clone(),
        actor: info.owner.clone(),
        etag: info.etag.clone(),
    });
    let time = info.create_time.unwrap_or_else(now_timestamp);
    Outgoing::new(&envelope(
        pb::EventType::ObjectCreated,
        &info.key,
        time,
        trace,
        data,
    ))
}

pub fn deleted(key: &str, actor: &str, trace: &TraceContext) -> Outgoing {
    let data = pb::event::Data::ObjectDeleted(pb::ObjectDeleted {
        key: key.to_owned(),
        actor: actor.to_owned(),
    });
    Outgoing::new(&envelope(
        pb::EventType::ObjectDeleted,
        key,
        now_timestamp(),
        trace,
        data,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_event_carries_the_object() {
        let info = ObjectInfo {
            key: "products/p/originals/i".into(),
            size_bytes: 3,
            content_type: "image/png".into(),
            sha256: "ab".repeat(32),
            metadata: [("k".to_owned(), "v".to_owned())].into(),
            owner: "seller-1".into(),
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            etag: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        };
        let trace = TraceContext {
            parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            state: String::new(),
        };
        let outgoing = created(&info, &trace);
        assert_eq!(outgoing.type_name, "EVENT_TYPE_OBJECT_CREATED");
        assert_eq!(outgoing.key, info.key);
        let event = pb::Event::decode(outgoing.encoded.as_slice()).unwrap();
        assert_eq!(event.id, outgoing.id);
        assert!(ulid::Ulid::from_string(&event.id).is_ok());
        assert_eq!(event.source, SOURCE);
        assert_eq!(event.time, info.create_time);
        assert_eq!(event.trace_parent, trace.parent);
        let Some(pb::event::Data::ObjectCreated(data)) = event.data else {
            panic!("object_created expected");
        };
        assert_eq!(data.actor, "seller-1");
        assert_eq!(data.etag, info.etag);
        assert_eq!(data.metadata, info.metadata);
    }

    #[test]
    fn deleted_event() {
        let outgoing = deleted("a/b", "admin", &TraceContext::default());
        assert_eq!(outgoing.type_name, "EVENT_TYPE_OBJECT_DELETED");
        let event = pb::Event::decode(outgoing.encoded.as_slice()).unwrap();
        assert_eq!(event.r#type(), pb::EventType::ObjectDeleted);
        assert!(
            matches!(event.data, Some(pb::event::Data::ObjectDeleted(ref d)) if d.actor == "admin")
        );
    }

    #[test]
    fn untraced_requests_have_empty_trace_context() {
        assert_eq!(TraceContext::current(), TraceContext::default());
    }
}
