//! Failures: retries with backoff, the dead-letter stream (final answers, exhausted retries,
//! too old events, undecodable entries), and a crashed instance's events taken over.

use std::time::Duration;

use redis::AsyncCommands;
use storemesh_testkit::RedisServer;

use crate::harness::*;

#[tokio::test]
async fn a_failed_delivery_is_retried_until_it_succeeds_without_blocking_others() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    target.script([
        Answer::Status(503, "busy"),
        Answer::Status(429, "slow down"),
    ]);
    let dispatcher = Running::start(settings(&server, config(&target.url("/fn")))).await;
    let flaky = created("products/p/originals/flaky", &[], "image/jpeg");
    publish(&mut redis, &flaky).await;
    eventually(
        "the event is delivered on the third attempt",
        Duration::from_secs(10),
        || async { target.deliveries_of(&flaky.id).len() >= 3 },
    )
    .await;
    // Meanwhile another event went through at once.
    let other = created("products/p/originals/other", &[], "image/jpeg");
    publish(&mut redis, &other).await;
    eventually(
        "the other event is delivered",
        Duration::from_secs(10),
        || async { target.deliveries_of(&other.id).len() == 1 },
    )
    .await;
    let attempts: Vec<u32> = target
        .deliveries_of(&flaky.id)
        .iter()
        .map(|r| r.delivery.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    let first_times: Vec<_> = target
        .deliveries_of(&flaky.id)
        .iter()
        .map(|r| r.delivery.first_attempt_time)
        .collect();
    assert!(
        first_times.windows(2).all(|w| w[0] == w[1]),
        "first attempt time is kept"
    );
    eventually(
        "nothing left pending or scheduled",
        Duration::from_secs(5),
        || {
            let mut redis = redis.clone();
            async move {
                let retries: u64 = redis.zcard("dispatcher:retries").await.unwrap();
                pending(&mut redis).await == 0 && retries == 0
            }
        },
    )
    .await;
    assert!(dlq(&mut redis).await.is_empty());
    let metrics = dispatcher.metrics().await;
    assert!(
        metrics.contains("dispatcher_retries_total{target=\"fn\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("dispatcher_deliveries_total{target=\"fn\",outcome=\"retry\"} 2"));
    dispatcher.stop().await;
}

#[tokio::test]
async fn a_final_refusal_goes_to_the_dead_letter_stream_at_once() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    target.script([Answer::Status(422, "not an image")]);
    let dispatcher = Running::start(settings(&server, config(&target.url("/fn")))).await;
    let event = created("products/p/originals/bomb", &[], "image/jpeg");
    publish(&mut redis, &event).await;
    eventually(
        "the event is dead-lettered",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            async move { !dlq(&mut redis).await.is_empty() }
        },
    )
    .await;
    let letters = dlq(&mut redis).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter["id"], event.id);
    assert_eq!(letter["key"], "products/p/originals/bomb");
    assert_eq!(letter["type"], "EVENT_TYPE_OBJECT_CREATED");
    assert_eq!(letter["target"], "fn");
    assert_eq!(letter["rule"], "products");
    assert_eq!(letter["reason"], "non_retryable");
    assert_eq!(letter["attempts"], "1");
    assert_eq!(letter["last_error"], "HTTP 422: not an image");
    assert_eq!(target.deliveries_of(&event.id).len(), 1, "not retried");
    assert_eq!(pending(&mut redis).await, 0);
    eventually("the DLQ gauge follows", Duration::from_secs(10), || async {
        dispatcher
            .metrics()
            .await
            .contains("dispatcher_dlq_entries 1")
    })
    .await;
    dispatcher.stop().await;
}

#[tokio::test]
async fn exhausted_retries_and_old_events_are_dead_lettered() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    target.answer_by_default(Answer::Status(500, "broken"));
    let mut config = config(&target.url("/fn"));
    config.max_attempts = 3;
    config.max_event_age_secs = 3_600;
    let dispatcher = Running::start(settings(&server, config)).await;

    let doomed = created("products/p/originals/doomed", &[], "image/jpeg");
    publish(&mut redis, &doomed).await;
    let mut old = created("products/p/originals/old", &[], "image/jpeg");
    old.time = Some(storemesh_runtime::time::timestamp_from_ms(
        storemesh_runtime::time::now_ms() - 2 * 3_600_000,
    ));
    publish(&mut redis, &old).await;

    eventually("both are dead-lettered", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        async move { dlq(&mut redis).await.len() == 2 }
    })
    .await;
    let letters = dlq(&mut redis).await;
    let of = |id: &str| letters.iter().find(|l| l["id"] == id).unwrap().clone();
    let exhausted = of(&doomed.id);
    assert_eq!(exhausted["reason"], "retries_exhausted");
    assert_eq!(exhausted["attempts"], "3");
    assert_eq!(exhausted["last_error"], "HTTP 500: broken");
    assert_eq!(target.deliveries_of(&doomed.id).len(), 3);
    let too_old = of(&old.id);
    assert_eq!(too_old["reason"], "max_event_age");
    assert_eq!(too_old["attempts"], "0");
    assert!(
        too_old["last_error"].contains("max_event_age_secs"),
        "{too_old:?}"
    );
    assert!(target.deliveries_of(&old.id).is_empty(), "never delivered");
    let retries: u64 = redis.zcard("dispatcher:retries").await.unwrap();
    assert_eq!(retries, 0);
    dispatcher.stop().await;
}

#[tokio::test]
async fn undecodable_entries_are_dead_lettered_not_stuck() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    let dispatcher = Running::start(settings(&server, config(&target.url("/fn")))).await;
    let _: String = redis
        .xadd(
            STREAM,
            "*",
            &[
                ("event", &b"\xff\xfe not protobuf"[..]),
                ("key", b"products/x"),
            ],
        )
        .await
        .unwrap();
    eventually(
        "the entry is dead-lettered",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            async move { dlq(&mut redis).await.len() == 1 }
        },
    )
    .await;
    assert_eq!(dlq(&mut redis).await[0]["reason"], "undecodable");
    assert_eq!(pending(&mut redis).await, 0);
    assert!(target.received().is_empty());
    dispatcher.stop().await;
}

#[tokio::test]
async fn a_crashed_instance_loses_no_event() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    // The first delivery never answers in time; the crash comes while it is in flight.
    target.script([Answer::Slow(Duration::from_secs(30))]);
    let mut config = config(&target.url("/fn"));
    config.claim_idle_ms = 1_500;
    config.targets.get_mut("fn").unwrap().timeout_ms = 1_000;
    let doomed = Running::start(settings(&server, config.clone())).await;
    let event = created("products/p/originals/crash", &[], "image/jpeg");
    publish(&mut redis, &event).await;
    eventually(
        "the delivery is in flight",
        Duration::from_secs(10),
        || async { !target.deliveries_of(&event.id).is_empty() },
    )
    .await;
    doomed.crash();
    assert_eq!(pending(&mut redis).await, 1, "read, not acknowledged");

    let survivor = Running::start(settings(&server, config)).await;
    eventually(
        "the survivor delivers it again",
        Duration::from_secs(15),
        || async { target.deliveries_of(&event.id).len() >= 2 },
    )
    .await;
    eventually("and acknowledges it", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        async move { pending(&mut redis).await == 0 }
    })
    .await;
    let redelivered = target.deliveries_of(&event.id);
    assert_eq!(
        redelivered[1].event().id,
        event.id,
        "same event id: the idempotency key"
    );
    assert!(dlq(&mut redis).await.is_empty());
    survivor.stop().await;
}

#[tokio::test]
async fn a_restarted_instance_with_a_stable_name_resumes_its_events_at_once() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    target.script([Answer::Slow(Duration::from_secs(30))]);
    let mut config = config(&target.url("/fn"));
    config.consumer = "dispatcher-0".into();
    // Far beyond the test: only resuming its own pending list can redeliver in time.
    config.claim_idle_ms = 600_000;
    let first = Running::start(settings(&server, config.clone())).await;
    let event = created("products/p/originals/restart", &[], "image/jpeg");
    publish(&mut redis, &event).await;
    eventually(
        "the delivery is in flight",
        Duration::from_secs(10),
        || async { !target.deliveries_of(&event.id).is_empty() },
    )
    .await;
    first.crash();
    let restarted = Running::start(settings(&server, config)).await;
    assert_eq!(restarted.consumer, "dispatcher-0");
    eventually(
        "the restarted instance delivers it again",
        Duration::from_secs(10),
        || async { target.deliveries_of(&event.id).len() >= 2 },
    )
    .await;
    eventually("and acknowledges it", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        async move { pending(&mut redis).await == 0 }
    })
    .await;
    restarted.stop().await;
}

#[tokio::test]
async fn a_retry_scheduled_before_a_crash_is_delivered_by_another_instance() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    // Retry-After: the retry is still waiting when the instance dies.
    target.script([Answer::RetryAfter(503, 2)]);
    let mut config = config(&target.url("/fn"));
    config.max_backoff_ms = 2_000;
    let doomed = Running::start(settings(&server, config.clone())).await;
    let event = created("products/p/originals/retry-crash", &[], "image/jpeg");
    publish(&mut redis, &event).await;
    eventually("the retry is scheduled", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        async move {
            let retries: u64 = redis.zcard("dispatcher:retries").await.unwrap();
            retries == 1
        }
    })
    .await;
    doomed.crash();
    let survivor = Running::start(settings(&server, config)).await;
    eventually(
        "the survivor delivers the retry",
        Duration::from_secs(15),
        || async { target.deliveries_of(&event.id).len() == 2 },
    )
    .await;
    assert_eq!(target.deliveries_of(&event.id)[1].delivery.attempt, 2);
    survivor.stop().await;
}

#[tokio::test]
async fn an_event_without_a_commit_time_is_not_judged_too_old() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    let dispatcher = Running::start(settings(&server, config(&target.url("/fn")))).await;
    let mut timeless = created("products/p/originals/timeless", &[], "image/jpeg");
    timeless.time = None;
    publish(&mut redis, &timeless).await;
    eventually("it is delivered", Duration::from_secs(10), || async {
        target.deliveries_of(&timeless.id).len() == 1
    })
    .await;
    assert!(dlq(&mut redis).await.is_empty());
    dispatcher.stop().await;
}

/// Issue 20, item 5: a target that refuses everything cannot grow the dead-letter stream
/// without bound, on any of the three paths that append to it (a final answer, retries
/// exhausted, an undecodable entry).
#[tokio::test]
async fn the_dead_letter_stream_stays_bounded() {
    use storemesh_dispatcher::config::RouteConfig;

    const CAP: u64 = 10;
    // Small stream nodes, so the approximate trim (whole nodes) stays close to the cap.
    const NODE: u64 = 5;
    const EACH: usize = 40;
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("stream-node-max-entries")
        .arg(NODE)
        .query_async(&mut redis)
        .await
        .unwrap();
    let refusing = HttpTarget::start().await;
    refusing.answer_by_default(Answer::Status(422, "never"));
    let failing = HttpTarget::start().await;
    failing.answer_by_default(Answer::Status(500, "down"));
    let mut config = config(&refusing.url("/refused"));
    config.dlq_max_entries = CAP;
    config.targets.insert(
        "failing".into(),
        storemesh_dispatcher::config::TargetConfig {
            max_attempts: Some(2),
            ..http_target(&failing.url("/failing"))
        },
    );
    config.routes = vec![
        RouteConfig {
            name: "refused".into(),
            key_prefix: "refused/".into(),
            target: "fn".into(),
            ..RouteConfig::default()
        },
        RouteConfig {
            name: "failing".into(),
            key_prefix: "failing/".into(),
            target: "failing".into(),
            ..RouteConfig::default()
        },
    ];
    let dispatcher = Running::start(settings(&server, config)).await;
    for n in 0..EACH {
        publish(
            &mut redis,
            &created(&format!("refused/{n}"), &[], "image/jpeg"),
        )
        .await;
        publish(
            &mut redis,
            &created(&format!("failing/{n}"), &[], "image/jpeg"),
        )
        .await;
        let _: String = redis
            .xadd(STREAM, "*", &[("event", &b"\xff not protobuf"[..])])
            .await
            .unwrap();
    }
    eventually(
        "every event is dead-lettered",
        Duration::from_secs(60),
        || {
            let mut redis = redis.clone();
            let (refused, failed) = (refusing.received().len(), failing.received().len());
            async move {
                let retries: u64 = redis.zcard("dispatcher:retries").await.unwrap();
                refused == EACH
                    && failed == 2 * EACH
                    && retries == 0
                    && pending(&mut redis).await == 0
            }
        },
    )
    .await;
    let length: u64 = redis.xlen(DLQ).await.unwrap();
    assert!(
        (CAP..=CAP + NODE).contains(&length),
        "{} dead letters appended, the stream holds {length}, the cap is ~{CAP}",
        3 * EACH
    );
    // The oldest went first: the first refusal is no longer there.
    let letters = dlq(&mut redis).await;
    assert!(
        !letters.iter().any(|letter| letter["key"] == "refused/0"),
        "{letters:?}"
    );
    dispatcher.stop().await;
}

/// Issue 20, item 5: Redis's memory against its limit is on /metrics (the alert
/// StoremeshRedisMemoryHigh fires before a `noeviction` Redis starts refusing writes).
#[tokio::test]
async fn redis_memory_and_its_limit_are_reported() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    for (name, value) in [("maxmemory", "64mb"), ("maxmemory-policy", "noeviction")] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let target = HttpTarget::start().await;
    let dispatcher = Running::start(settings(&server, config(&target.url("/fn")))).await;
    eventually(
        "the Redis gauges are exported",
        Duration::from_secs(20),
        || async {
            let metrics = dispatcher.metrics().await;
            metrics.contains("dispatcher_redis_maxmemory_bytes 67108864")
                && metrics.contains("dispatcher_redis_noeviction 1")
                && metrics.lines().any(|line| {
                    line.starts_with("dispatcher_redis_used_memory_bytes ") && !line.ends_with(" 0")
                })
        },
    )
    .await;
    // A policy that evicts is reported as such.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut redis)
        .await
        .unwrap();
    eventually(
        "the eviction policy is reported",
        Duration::from_secs(20),
        || async {
            dispatcher
                .metrics()
                .await
                .contains("dispatcher_redis_noeviction 0")
        },
    )
    .await;
    dispatcher.stop().await;
}
