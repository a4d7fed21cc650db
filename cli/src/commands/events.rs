//! `fleetmig events [--wave W]`: follow the event stream until Ctrl-C.

use std::process::ExitCode;

use anyhow::bail;
use fleetmig_proto::v1::WatchEventsRequest;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::cli::EventsArgs;
use crate::client::{self, rpc_error};
use crate::output;

/// Prints one line per event until Ctrl-C or until the controller ends the stream.
pub async fn run(
    controller: &str,
    args: EventsArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(controller).await?;
    let mut stream = client
        .watch_events(WatchEventsRequest {
            wave: args.wave.unwrap_or_default(),
            replay: args.replay,
        })
        .await
        .map_err(|status| rpc_error(controller, "watch events", &status))?
        .into_inner();
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
            next = stream.next() => next,
        };
        match next {
            Some(Ok(event)) => output::emit(&output::render_event(&event))?,
            Some(Err(status)) => return Err(rpc_error(controller, "watch events", &status)),
            None => bail!("the controller at {controller} ended the event stream"),
        }
    }
}
