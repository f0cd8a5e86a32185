//! `storemesh events …`: the dead-letter stream (`dlq list|show|replay|purge`) and `tail` of
//! the storage event stream. They talk to Redis directly (`redis.url` / `REDIS_URL`) and read
//! the stream names from the `[dispatcher]` section, so they work with or without a running
//! dispatcher (a replayed dead letter is delivered once one runs).

use std::io::Write;

use chrono::{DateTime, SecondsFormat};
use prost::Message;
use redis::aio::ConnectionManager;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use serde_json::json;
use storemesh_proto::events::v1::Event;
use storemesh_proto::events::v1::event::Data;
use storemesh_runtime::redis::RedisConfig;
use storemesh_runtime::{ConfigError, ConfigLoader};

use crate::config::DispatcherConfig;
use crate::store::{DeadLetter, DeadLetters, DlqError};

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Inspect and act on the dead-letter stream.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Print the latest storage events, then follow new ones (type, key, id, time).
    Tail(TailArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its event.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Deliver a dead letter again to its target (attempt 1, the age limit waived).
    Replay { id: String },
    /// Delete the given dead letters, or all of them when no id is given.
    Purge { ids: Vec<String> },
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Events to show from the end of the stream before following.
    #[arg(long, default_value_t = 10)]
    pub last: usize,
    /// Print the latest events and exit instead of following.
    #[arg(long)]
    pub no_follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(transparent)]
    Dlq(#[from] DlqError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs `command` with the configuration `loader` provides, printing to stdout; `tail`
/// follows until Ctrl-C.
pub async fn run(command: EventsCommand, loader: &ConfigLoader) -> Result<(), CliError> {
    let dispatcher: DispatcherConfig = loader.section("dispatcher")?;
    let redis: RedisConfig = loader.section("redis")?;
    let connection = storemesh_runtime::redis::connect(&redis)
        .await
        .map_err(|source| CliError::Connect {
            url: storemesh_runtime::secret::redact_url(&redis.url),
            source,
        })?;
    let mut stdout = std::io::stdout();
    execute(command, &dispatcher, connection, &mut stdout, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// [`run`] with its dependencies given: the output and when `tail` stops following.
pub async fn execute(
    command: EventsCommand,
    config: &DispatcherConfig,
    redis: ConnectionManager,
    out: &mut (dyn Write + Send),
    stop: impl Future<Output = ()>,
) -> Result<(), CliError> {
    let letters = DeadLetters::new(redis.clone(), &config.dlq_stream, &config.retry_key);
    match command {
        EventsCommand::Dlq { command } => match command {
            DlqCommand::List { limit, json } => {
                let list = letters.list(None, limit).await?;
                if !json {
                    if list.is_empty() {
                        writeln!(out, "the dead-letter stream {} is empty", config.dlq_stream)?;
                        return Ok(());
                    }
                    writeln!(
                        out,
                        "{:<17} {:<24} {:<16} {:<18} {:>8}  {:<26}  KEY",
                        "ID", "FAILED (UTC)", "TARGET", "REASON", "ATTEMPTS", "EVENT"
                    )?;
                }
                for letter in &list {
                    if json {
                        writeln!(out, "{}", letter_json(letter))?;
                    } else {
                        writeln!(
                            out,
                            "{:<17} {:<24} {:<16} {:<18} {:>8}  {:<26}  {}",
                            letter.id,
                            time_ms(letter.failed_ms),
                            letter.target,
                            letter.reason,
                            letter.attempts,
                            letter.event_id,
                            letter.key
                        )?;
                    }
                }
            }
            DlqCommand::Show { id, json } => {
                let letter = letters.get(&id).await?;
                if json {
                    writeln!(out, "{}", letter_json(&letter))?;
                } else {
                    let event = letter.decoded_event();
                    writeln!(out, "dead letter   {}", letter.id)?;
                    writeln!(
                        out,
                        "event         {} ({})",
                        letter.event_id, letter.event_type
                    )?;
                    writeln!(out, "key           {}", letter.key)?;
                    writeln!(
                        out,
                        "target        {} (rule {})",
                        letter.target, letter.rule
                    )?;
                    writeln!(out, "reason        {}", letter.reason)?;
                    writeln!(out, "attempts      {}", letter.attempts)?;
                    writeln!(out, "last error    {}", letter.last_error)?;
                    writeln!(out, "first attempt {}", time_ms(letter.first_attempt_ms))?;
                    writeln!(out, "failed        {}", time_ms(letter.failed_ms))?;
                    if let Some(event) = event {
                        writeln!(out, "source        {}", event.source)?;
                        writeln!(out, "committed     {}", event_time(&event))?;
                        if let Some(Data::ObjectCreated(created)) = &event.data {
                            writeln!(
                                out,
                                "object        {} bytes, {}, sha256 {}",
                                created.size_bytes, created.content_type, created.sha256
                            )?;
                            let mut metadata: Vec<_> = created.metadata.iter().collect();
                            metadata.sort();
                            for (name, value) in metadata {
                                writeln!(out, "metadata      {name} = {value}")?;
                            }
                        }
                    } else {
                        writeln!(out, "(the stored event cannot be decoded)")?;
                    }
                }
            }
            DlqCommand::Replay { id } => {
                let letter = letters.replay(&id).await?;
                writeln!(
                    out,
                    "replayed {}: event {} ({}) scheduled for delivery to {}",
                    letter.id, letter.event_id, letter.key, letter.target
                )?;
            }
            DlqCommand::Purge { ids } => {
                let deleted = letters.purge(&ids).await?;
                writeln!(out, "purged {deleted} dead letter(s)")?;
            }
        },
        EventsCommand::Tail(args) => tail(config, redis, args, out, stop).await?,
    }
    Ok(())
}

async fn tail(
    config: &DispatcherConfig,
    mut redis: ConnectionManager,
    args: TailArgs,
    out: &mut (dyn Write + Send),
    stop: impl Future<Output = ()>,
) -> Result<(), CliError> {
    let latest: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&config.stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(args.last)
        .query_async(&mut redis)
        .await?;
    // Remember the newest id even when nothing is shown, so following starts after it.
    let mut last_id = if args.last == 0 {
        let newest: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&config.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut redis)
            .await?;
        newest
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone())
    } else {
        latest
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone())
    };
    for entry in latest.ids.iter().rev() {
        print_entry(out, &entry.id, &entry.map, args.json)?;
    }
    out.flush()?;
    if args.no_follow {
        return Ok(());
    }
    tokio::pin!(stop);
    loop {
        let options = StreamReadOptions::default().count(100).block(1_000);
        let streams = [config.stream.as_str()];
        let ids = [last_id.as_str()];
        let read = redis::AsyncCommands::xread_options::<_, _, Option<StreamReadReply>>(
            &mut redis, &streams, &ids, &options,
        );
        let reply = tokio::select! {
            reply = read => reply?,
            () = &mut stop => return Ok(()),
        };
        for key in reply.map(|reply| reply.keys).unwrap_or_default() {
            for entry in key.ids {
                print_entry(out, &entry.id, &entry.map, args.json)?;
                last_id = entry.id;
            }
        }
        out.flush()?;
    }
}

fn print_entry(
    out: &mut (dyn Write + Send),
    entry_id: &str,
    fields: &std::collections::HashMap<String, redis::Value>,
    json: bool,
) -> std::io::Result<()> {
    let text = |name: &str| -> String {
        fields
            .get(name)
            .and_then(|value| redis::from_redis_value::<String>(value.clone()).ok())
            .unwrap_or_default()
    };
    let event = fields
        .get("event")
        .and_then(|value| redis::from_redis_value::<Vec<u8>>(value.clone()).ok())
        .and_then(|bytes| Event::decode(bytes.as_slice()).ok());
    let (time, source) = event
        .as_ref()
        .map_or((String::new(), String::new()), |event| {
            (event_time(event), event.source.clone())
        });
    if json {
        writeln!(
            out,
            "{}",
            json!({
                "entry": entry_id,
                "id": text("id"),
                "type": text("type"),
                "key": text("key"),
                "time": time,
                "source": source,
            })
        )
    } else {
        writeln!(
            out,
            "{:<24} {:<26} {}  {}",
            time,
            text("type"),
            text("key"),
            text("id")
        )
    }
}

fn letter_json(letter: &DeadLetter) -> serde_json::Value {
    let mut value = serde_json::to_value(letter).unwrap_or_default();
    if let (Some(object), Some(event)) = (value.as_object_mut(), letter.decoded_event()) {
        object.insert("source".into(), json!(event.source));
        object.insert("committed".into(), json!(event_time(&event)));
    }
    value
}

fn time_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|time| time.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn event_time(event: &Event) -> String {
    event
        .time
        .as_ref()
        .and_then(|time| {
            DateTime::from_timestamp(time.seconds, u32::try_from(time.nanos).unwrap_or(0))
        })
        .map(|time| time.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}
