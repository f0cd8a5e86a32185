//! `storemesh events dlq list|show|replay|purge` and `storemesh events tail`, run through the
//! same function the binary calls, against a real Redis and a running dispatcher.

use std::time::Duration;

use storemesh_dispatcher::cli::{DlqCommand, EventsCommand, TailArgs, execute};
use storemesh_dispatcher::config::DispatcherConfig;
use storemesh_runtime::redis::RedisConfig;
use storemesh_testkit::RedisServer;

use crate::harness::*;

async fn connection(server: &RedisServer) -> redis::aio::ConnectionManager {
    storemesh_runtime::redis::connect(&RedisConfig {
        url: server.url(),
        ..RedisConfig::default()
    })
    .await
    .unwrap()
}

async fn run(
    server: &RedisServer,
    config: &DispatcherConfig,
    command: EventsCommand,
) -> Result<String, storemesh_dispatcher::cli::CliError> {
    let mut out = Vec::new();
    execute(command, config, connection(server).await, &mut out, async {
    })
    .await?;
    Ok(String::from_utf8(out).unwrap())
}

fn dlq_command(command: DlqCommand) -> EventsCommand {
    EventsCommand::Dlq { command }
}

#[tokio::test]
async fn dead_letters_are_listed_shown_replayed_and_purged() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let target = HttpTarget::start().await;
    target.script([
        Answer::Status(400, "bad delivery"),
        Answer::Status(403, "forbidden"),
    ]);
    let config = config(&target.url("/fn"));
    let dispatcher = Running::start(settings(&server, config.clone())).await;
    let first = created(
        "products/p/originals/one",
        &[("origin", "test")],
        "image/jpeg",
    );
    let second = created("products/p/originals/two", &[], "image/jpeg");
    publish(&mut redis, &first).await;
    eventually(
        "the first is dead-lettered",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            async move { dlq(&mut redis).await.len() == 1 }
        },
    )
    .await;
    publish(&mut redis, &second).await;
    eventually("both are dead-lettered", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        async move { dlq(&mut redis).await.len() == 2 }
    })
    .await;

    let listed = run(
        &server,
        &config,
        dlq_command(DlqCommand::List {
            limit: 50,
            json: false,
        }),
    )
    .await
    .unwrap();
    assert!(listed.contains("non_retryable"), "{listed}");
    assert!(
        listed.contains(&first.id) && listed.contains(&second.id),
        "{listed}"
    );
    let json = run(
        &server,
        &config,
        dlq_command(DlqCommand::List {
            limit: 50,
            json: true,
        }),
    )
    .await
    .unwrap();
    let letters: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["event_id"], first.id.as_str());
    assert_eq!(letters[0]["last_error"], "HTTP 400: bad delivery");
    assert_eq!(letters[0]["attempts"], 1);
    assert_eq!(letters[0]["source"], "storemesh.storage");
    let first_letter = letters[0]["id"].as_str().unwrap().to_owned();
    let second_letter = letters[1]["id"].as_str().unwrap().to_owned();

    let shown = run(
        &server,
        &config,
        dlq_command(DlqCommand::Show {
            id: first_letter.clone(),
            json: false,
        }),
    )
    .await
    .unwrap();
    assert!(shown.contains("HTTP 400: bad delivery"), "{shown}");
    assert!(shown.contains("metadata      origin = test"), "{shown}");
    assert!(shown.contains("products/p/originals/one"), "{shown}");

    // Replay: delivered again (attempt 1) by the running dispatcher, gone from the DLQ.
    let replayed = run(
        &server,
        &config,
        dlq_command(DlqCommand::Replay {
            id: first_letter.clone(),
        }),
    )
    .await
    .unwrap();
    assert!(replayed.contains(&first.id), "{replayed}");
    eventually(
        "the replay is delivered",
        Duration::from_secs(10),
        || async { target.deliveries_of(&first.id).len() == 2 },
    )
    .await;
    assert_eq!(target.deliveries_of(&first.id)[1].delivery.attempt, 1);
    assert_eq!(dlq(&mut redis).await.len(), 1);

    // Unknown or malformed ids are clear errors.
    for id in ["1-1", "not-an-id", &first_letter] {
        let error = run(
            &server,
            &config,
            dlq_command(DlqCommand::Show {
                id: id.into(),
                json: false,
            }),
        )
        .await
        .unwrap_err();
        assert!(
            error.to_string().contains("no dead letter with id"),
            "{error}"
        );
        let error = run(
            &server,
            &config,
            dlq_command(DlqCommand::Replay { id: id.into() }),
        )
        .await
        .unwrap_err();
        assert!(
            error.to_string().contains("no dead letter with id"),
            "{error}"
        );
    }

    let purged = run(
        &server,
        &config,
        dlq_command(DlqCommand::Purge {
            ids: vec![second_letter],
        }),
    )
    .await
    .unwrap();
    assert_eq!(purged.trim(), "purged 1 dead letter(s)");
    let empty = run(
        &server,
        &config,
        dlq_command(DlqCommand::List {
            limit: 50,
            json: false,
        }),
    )
    .await
    .unwrap();
    assert!(empty.contains("is empty"), "{empty}");
    let purged = run(
        &server,
        &config,
        dlq_command(DlqCommand::Purge { ids: vec![] }),
    )
    .await
    .unwrap();
    assert_eq!(purged.trim(), "purged 0 dead letter(s)");
    dispatcher.stop().await;
}

#[tokio::test]
async fn tail_prints_the_latest_events_then_follows() {
    let server = RedisServer::start().unwrap();
    let mut redis = redis(&server).await;
    let config = config("http://127.0.0.1:9/unused");
    let old = created("products/p/originals/old", &[], "image/jpeg");
    let recent = deleted("products/p/originals/recent");
    publish(&mut redis, &old).await;
    publish(&mut redis, &recent).await;

    let latest = run(
        &server,
        &config,
        EventsCommand::Tail(TailArgs {
            last: 1,
            no_follow: true,
            json: false,
        }),
    )
    .await
    .unwrap();
    assert!(!latest.contains(&old.id), "only the last one: {latest}");
    assert!(latest.contains("EVENT_TYPE_OBJECT_DELETED"), "{latest}");
    assert!(latest.contains("products/p/originals/recent") && latest.contains(&recent.id));

    let mut out = Vec::new();
    let live = created("products/p/originals/live", &[], "image/png");
    let follow = execute(
        EventsCommand::Tail(TailArgs {
            last: 0,
            no_follow: false,
            json: true,
        }),
        &config,
        connection(&server).await,
        &mut out,
        tokio::time::sleep(Duration::from_millis(1_500)),
    );
    let mut writer = redis.clone();
    let (followed, ()) = tokio::join!(follow, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish(&mut writer, &live).await;
    });
    followed.unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["id"], live.id.as_str());
    assert_eq!(lines[0]["type"], "EVENT_TYPE_OBJECT_CREATED");
    assert_eq!(lines[0]["key"], "products/p/originals/live");
    assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
}
