//! Normal delivery: signed HTTP deliveries, acknowledgement, routing, sharing the work between
//! instances, the per-target concurrency limit, metrics, and rules refused at start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use storemesh_dispatcher::config::{RouteConfig, TargetConfig};
use storemesh_dispatcher::routing::EventKind;
use storemesh_testkit::RedisServer;

use crate::harness::*;

#[tokio::test]
async fn events_are_delivered_signed_and_acknowledged() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    let dispatcher = Running::start(settings(
        &server,
        config(&target.url("/internal/thumbnail")),
    ))
    .await;

    let mut event = created("products/p1/originals/img1", &[], "image/jpeg");
    event.trace_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
    publish(&mut redis, &event).await;
    // Not routed: another prefix, and a delete (the rule selects ObjectCreated only).
    publish(&mut redis, &created("media/x.jpg", &[], "image/jpeg")).await;
    publish(&mut redis, &deleted("products/p1/originals/img1")).await;

    eventually(
        "the event is delivered",
        Duration::from_secs(10),
        || async { !target.deliveries_of(&event.id).is_empty() },
    )
    .await;
    eventually(
        "every entry is acknowledged",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            async move { pending(&mut redis).await == 0 }
        },
    )
    .await;
    let received = target.received();
    assert_eq!(received.len(), 1, "only the routed event: {received:?}");
    let delivery = &received[0];
    assert!(delivery.signature_ok);
    assert_eq!(delivery.path, "/internal/thumbnail");
    assert_eq!(delivery.delivery.attempt, 1);
    assert!(delivery.delivery.first_attempt_time.is_some());
    assert_eq!(delivery.event(), &event, "the event arrives unchanged");
    let header = |name: &str| {
        delivery
            .headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("content-type"), storemesh_delivery::CONTENT_TYPE);
    assert_eq!(header(storemesh_delivery::EVENT_ID_HEADER), event.id);
    assert_eq!(header(storemesh_delivery::IDEMPOTENCY_KEY_HEADER), event.id);
    assert_eq!(header(storemesh_delivery::ATTEMPT_HEADER), "1");
    assert_eq!(header("traceparent"), event.trace_parent);
    assert!(dlq(&mut redis).await.is_empty());

    // The metrics the alerts are written against are on the admin port.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = dispatcher.metrics().await;
        if metrics.contains("dispatcher_consumer_lag") && metrics.contains("dispatcher_dlq_entries")
        {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no gauges:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for name in [
        "dispatcher_deliveries_total{target=\"fn\",outcome=\"success\"}",
        "dispatcher_delivery_duration_seconds_bucket{target=\"fn\"",
        "dispatcher_event_age_seconds_bucket{target=\"fn\"",
        "dispatcher_retries_total{target=\"fn\"}",
        "dispatcher_dlq_entries",
        "dispatcher_consumer_lag",
        "dispatcher_events_ignored_total",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    assert!(
        http_get(dispatcher.admin, "/readyz")
            .await
            .contains("200 OK")
    );
    dispatcher.stop().await;
}

#[tokio::test]
async fn two_instances_share_the_work_without_double_delivery() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    // Slow answers, so neither instance can take everything alone.
    target.answer_by_default(Answer::Slow(Duration::from_millis(30)));
    let one_config = |path: &str| {
        let mut config = config(&target.url(path));
        config.batch_size = 2;
        config.targets.get_mut("fn").unwrap().concurrency = 2;
        config
    };
    let first = Running::start(settings(&server, one_config("/first"))).await;
    let second = Running::start(settings(&server, one_config("/second"))).await;
    assert_ne!(first.consumer, second.consumer);

    let mut ids = BTreeSet::new();
    for n in 0..60 {
        let event = created(&format!("products/p/originals/i{n}"), &[], "image/jpeg");
        ids.insert(event.id.clone());
        publish(&mut redis, &event).await;
    }
    eventually(
        "all 60 events are delivered",
        Duration::from_secs(20),
        || async { target.received().len() >= 60 },
    )
    .await;
    eventually(
        "every entry is acknowledged",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            async move { pending(&mut redis).await == 0 }
        },
    )
    .await;
    let received = target.received();
    let mut per_event: BTreeMap<String, usize> = BTreeMap::new();
    for delivery in &received {
        *per_event.entry(delivery.event().id.clone()).or_default() += 1;
    }
    assert_eq!(per_event.keys().cloned().collect::<BTreeSet<_>>(), ids);
    assert!(
        per_event.values().all(|count| *count == 1),
        "no event twice: {per_event:?}"
    );
    let by_first = received.iter().filter(|r| r.path == "/first").count();
    let by_second = received.iter().filter(|r| r.path == "/second").count();
    assert!(
        by_first > 0 && by_second > 0,
        "both instances worked: {by_first} / {by_second}"
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn concurrency_per_target_is_limited() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    target.answer_by_default(Answer::Slow(Duration::from_millis(150)));
    let mut config = config(&target.url("/fn"));
    config.targets.get_mut("fn").unwrap().concurrency = 3;
    let dispatcher = Running::start(settings(&server, config)).await;
    for n in 0..12 {
        publish(
            &mut redis,
            &created(&format!("products/p/originals/c{n}"), &[], "image/png"),
        )
        .await;
    }
    eventually("all delivered", Duration::from_secs(20), || async {
        target.received().len() >= 12
    })
    .await;
    let max = target.state.max_in_flight.load(Ordering::SeqCst);
    assert_eq!(max, 3, "at most 3 at once, and the limit was reached");
    dispatcher.stop().await;
}

#[tokio::test]
async fn routing_by_type_prefix_suffix_and_glob_reaches_each_target_once() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    let mut config = config(&target.url("/unused"));
    config.targets = BTreeMap::from([
        (
            "originals".to_owned(),
            http_target(&target.url("/originals")),
        ),
        ("jpegs".to_owned(), http_target(&target.url("/jpegs"))),
        ("deletes".to_owned(), http_target(&target.url("/deletes"))),
    ]);
    let rule = |name: &str, target: &str| RouteConfig {
        name: name.into(),
        target: target.into(),
        ..RouteConfig::default()
    };
    config.routes = vec![
        RouteConfig {
            key_glob: "products/*/originals/*".into(),
            ..rule("originals", "originals")
        },
        RouteConfig {
            key_prefix: "products/".into(),
            key_suffix: ".jpg".into(),
            ..rule("jpegs", "jpegs")
        },
        // The same target twice: one delivery per target.
        RouteConfig {
            key_glob: "products/*/thumbnails/*/*.jpg".into(),
            ..rule("thumbnail-jpegs", "jpegs")
        },
        RouteConfig {
            events: vec![EventKind::ObjectDeleted],
            key_prefix: "products/".into(),
            ..rule("deletes", "deletes")
        },
    ];
    let dispatcher = Running::start(settings(&server, config)).await;
    let original = created("products/p/originals/i", &[], "image/jpeg");
    let thumbnail = created("products/p/thumbnails/i/w160.jpg", &[], "image/jpeg");
    let png = created("products/p/thumbnails/i/w160.png", &[], "image/png");
    let gone = deleted("products/p/originals/i");
    for event in [&original, &thumbnail, &png, &gone] {
        publish(&mut redis, event).await;
    }
    eventually(
        "every entry is acknowledged",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            let target = &target;
            async move { pending(&mut redis).await == 0 && target.received().len() >= 3 }
        },
    )
    .await;
    let paths = |id: &str| -> Vec<String> {
        target
            .deliveries_of(id)
            .into_iter()
            .map(|r| r.path)
            .collect()
    };
    assert_eq!(paths(&original.id), ["/originals"]);
    assert_eq!(paths(&thumbnail.id), ["/jpegs"]);
    assert!(paths(&png.id).is_empty());
    assert_eq!(paths(&gone.id), ["/deletes"]);
    dispatcher.stop().await;
}

#[tokio::test]
async fn rules_that_would_loop_are_refused_at_start() {
    let server = RedisServer::start().unwrap();
    let mut config = config("http://127.0.0.1:9/fn");
    config.targets = BTreeMap::from([(
        "thumbnail".to_owned(),
        TargetConfig {
            produces: vec!["products/*/thumbnails/**".into()],
            ..http_target("http://127.0.0.1:9/thumbnail")
        },
    )]);
    config.routes = vec![RouteConfig {
        name: "all-images".into(),
        key_prefix: "products/".into(),
        target: "thumbnail".into(),
        ..RouteConfig::default()
    }];
    let Err(error) = storemesh_dispatcher::build(settings(&server, config)).await else {
        panic!("a looping rule was accepted");
    };
    let message = error.to_string();
    assert!(message.contains("dispatcher.routes"), "{message}");
    assert!(
        message.contains("rule `all-images` → target `thumbnail`"),
        "{message}"
    );

    // And without a signing secret, HTTP targets cannot be used.
    let mut unsigned = crate::harness::config("http://127.0.0.1:9/fn");
    unsigned.signing_secrets.clear();
    let Err(error) = storemesh_dispatcher::build(settings(&server, unsigned)).await else {
        panic!("unsigned deliveries were allowed");
    };
    assert!(
        error.to_string().contains("dispatcher.signing_secrets"),
        "{error}"
    );
}

#[tokio::test]
async fn sigterm_drains_deliveries_in_flight() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    target.answer_by_default(Answer::Slow(Duration::from_millis(400)));
    let dispatcher = Running::start(settings(&server, config(&target.url("/fn")))).await;
    let event = created("products/p/originals/drain", &[], "image/jpeg");
    publish(&mut redis, &event).await;
    eventually("the delivery started", Duration::from_secs(10), || async {
        !target.deliveries_of(&event.id).is_empty()
    })
    .await;
    // Stop while the target is still answering: the delivery finishes and is acknowledged.
    dispatcher.stop().await;
    assert_eq!(
        pending(&mut redis).await,
        0,
        "finished and acknowledged before exit"
    );
    assert!(dlq(&mut redis).await.is_empty());
}

#[tokio::test]
async fn consumers_of_stopped_instances_are_forgotten_unless_they_hold_events() {
    use redis::AsyncCommands;
    use redis::streams::{StreamReadOptions, StreamReadReply};

    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    // Two earlier instances: one finished its work, one died holding an event.
    let _: () = redis
        .xgroup_create_mkstream(STREAM, "dispatcher", "0")
        .await
        .unwrap();
    let reader = redis.clone();
    let read_as = |consumer: &'static str| {
        let mut redis = reader.clone();
        async move {
            let reply: Option<StreamReadReply> = redis
                .xread_options(
                    &[STREAM],
                    &[">"],
                    &StreamReadOptions::default()
                        .group("dispatcher", consumer)
                        .count(1),
                )
                .await
                .unwrap();
            reply.unwrap().keys[0].ids[0].id.clone()
        }
    };
    publish(
        &mut redis,
        &created("products/p/originals/done", &[], "image/jpeg"),
    )
    .await;
    let done = read_as("old-finished").await;
    let _: i64 = redis.xack(STREAM, "dispatcher", &[&done]).await.unwrap();
    let held = created("products/p/originals/held", &[], "image/jpeg");
    publish(&mut redis, &held).await;
    read_as("old-dead").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let mut config = config(&target.url("/fn"));
    config.forget_consumers_after_ms = 1_000;
    config.claim_idle_ms = 1_500;
    let dispatcher = Running::start(settings(&server, config)).await;
    let names = || {
        let mut redis = redis.clone();
        async move {
            let consumers: Vec<std::collections::HashMap<String, redis::Value>> =
                redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(STREAM)
                    .arg("dispatcher")
                    .query_async(&mut redis)
                    .await
                    .unwrap();
            consumers
                .iter()
                .map(|c| redis::from_redis_value::<String>(c["name"].clone()).unwrap())
                .collect::<BTreeSet<String>>()
        }
    };
    eventually(
        "the finished consumer is forgotten",
        Duration::from_secs(10),
        || async { !names().await.contains("old-finished") },
    )
    .await;
    // The dead one's event is taken over (not lost with its consumer).
    eventually(
        "the held event is delivered",
        Duration::from_secs(10),
        || async { target.deliveries_of(&held.id).len() == 1 },
    )
    .await;
    assert!(names().await.contains(&dispatcher.consumer));
    dispatcher.stop().await;
}
