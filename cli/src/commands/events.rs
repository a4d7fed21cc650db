//! `fleetmig events [--wave W] [--follow] [--replay] [--json]`: the stored
//! audit log, or the live event stream until Ctrl-C.

use std::process::ExitCode;

use anyhow::bail;
use fleetmig_proto::v1::WatchEventsRequest;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::cli::EventsArgs;
use crate::client::{self, rpc_error};
use crate::output;

/// Without `--follow`: prints the stored audit log and exits (one JSON
/// document with `--json`). With it: one line per event (JSON lines with
/// `--json`) until Ctrl-C or until the controller ends the stream.
pub async fn run(
    controller: &str,
    args: EventsArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let follow = args.follows();
    let json = args.output.json;
    let mut client = client::connect(controller).await?;
    let mut stream = client
        .watch_events(WatchEventsRequest {
            wave: args.wave.clone().unwrap_or_default(),
            replay: args.replays(),
            stop_after_replay: !follow,
        })
        .await
        .map_err(|status| rpc_error(controller, "watch events", &status))?
        .into_inner();
    let mut collected = Vec::new();
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
            next = stream.next() => next,
        };
        match next {
            Some(Ok(event)) if !follow => collected.push(event),
            Some(Ok(event)) if json => {
                output::emit(&serde_json::to_string(&output::event_json(&event))?)?;
            }
            Some(Ok(event)) => output::emit(&output::render_event(&event))?,
            Some(Err(status)) => return Err(rpc_error(controller, "watch events", &status)),
            None if !follow => break,
            None => bail!("the controller at {controller} ended the event stream"),
        }
    }
    if json {
        let events: Vec<_> = collected.iter().map(output::event_json).collect();
        let document = serde_json::json!({ "events": events });
        output::emit(&serde_json::to_string_pretty(&document)?)?;
    } else if collected.is_empty() {
        output::emit("no events")?;
    } else {
        let lines: Vec<String> = collected.iter().map(output::render_event).collect();
        output::emit(&lines.join("\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}
