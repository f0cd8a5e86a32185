//! The shared runtime's consumer-group set-up, against a real `redis-server`.
#![allow(clippy::unwrap_used)]

use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use storemesh_runtime::redis::{RedisConfig, connect, ensure_group, is_missing_group};
use storemesh_testkit::RedisServer;

async fn connection(redis: &RedisServer) -> redis::aio::ConnectionManager {
    connect(&RedisConfig {
        url: redis.url(),
        connect_timeout_ms: 2_000,
        response_timeout_ms: 2_000,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn creating_a_group_twice_is_ok_and_it_starts_at_the_beginning() {
    let redis = RedisServer::start().unwrap();
    let connection = connection(&redis).await;
    let mut commands = connection.clone();
    // An entry written before the group exists is read by it.
    let _: String = commands
        .xadd("events", "*", &[("field", "early")])
        .await
        .unwrap();
    ensure_group(&connection, "events", "workers")
        .await
        .unwrap();
    ensure_group(&connection, "events", "workers")
        .await
        .unwrap();
    // And on a stream that does not exist yet, which it creates.
    ensure_group(&connection, "fresh", "workers").await.unwrap();
    ensure_group(&connection, "fresh", "workers").await.unwrap();
    let exists: bool = commands.exists("fresh").await.unwrap();
    assert!(exists, "the stream is created with the group");

    let read: Option<StreamReadReply> = commands
        .xread_options(
            &["events"],
            &[">"],
            &StreamReadOptions::default().group("workers", "one"),
        )
        .await
        .unwrap();
    let ids: usize = read.unwrap().keys.iter().map(|key| key.ids.len()).sum();
    assert_eq!(ids, 1);
}

#[tokio::test]
async fn other_errors_are_errors() {
    let redis = RedisServer::start().unwrap();
    let connection = connection(&redis).await;
    let _: () = connection
        .clone()
        .set("not-a-stream", "a string")
        .await
        .unwrap();
    let error = ensure_group(&connection, "not-a-stream", "workers")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("WRONGTYPE"), "{error}");
    assert!(!is_missing_group(&error));
}

#[tokio::test]
async fn a_missing_group_is_recognised_by_its_code() {
    let redis = RedisServer::start().unwrap();
    let connection = connection(&redis).await;
    let mut commands = connection.clone();
    ensure_group(&connection, "events", "workers")
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut commands)
        .await
        .unwrap();
    let read: redis::RedisResult<Option<StreamReadReply>> = commands
        .xread_options(
            &["events"],
            &[">"],
            &StreamReadOptions::default().group("workers", "one"),
        )
        .await;
    let error = read.unwrap_err();
    assert!(is_missing_group(&error), "{error}");
    ensure_group(&connection, "events", "workers")
        .await
        .unwrap();
    let read: Option<StreamReadReply> = commands
        .xread_options(
            &["events"],
            &[">"],
            &StreamReadOptions::default().group("workers", "one"),
        )
        .await
        .unwrap();
    assert!(read.is_none_or(|reply| reply.keys.iter().all(|key| key.ids.is_empty())));
}
