//! `fleetmig wave start|pause|resume|abort|promote|retry-failed|status NAME`.

use std::process::ExitCode;

use anyhow::Context;
use fleetmig_proto::v1::{RetryFailedRequest, StatusRequest, WaveRequest};

use crate::cli::{RetryFailedArgs, WaveArgs, WaveCommand};
use crate::client::{self, OperatorClient, rpc_error};
use crate::output;

/// Runs a wave command: a control (printing the wave's state afterwards),
/// `retry-failed`, or the focused `status` view.
pub async fn run(controller: &str, command: WaveCommand, actor: &str) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(controller).await?;
    match command {
        WaveCommand::RetryFailed(args) => retry_failed(controller, &mut client, args, actor).await,
        WaveCommand::Status(args) => status(controller, &mut client, args).await,
        control => {
            let (args, action) = control.parts();
            let request = WaveRequest {
                wave: args.name.clone(),
                actor: actor.to_owned(),
            };
            let response = match &control {
                WaveCommand::Start(_) => client.start_wave(request).await,
                WaveCommand::Pause(_) => client.pause_wave(request).await,
                WaveCommand::Resume(_) => client.resume_wave(request).await,
                WaveCommand::Abort(_) => client.abort_wave(request).await,
                WaveCommand::Promote(_) => client.promote_wave(request).await,
                WaveCommand::RetryFailed(_) | WaveCommand::Status(_) => {
                    unreachable!("handled above")
                }
            }
            .map_err(|status| {
                rpc_error(controller, &format!("{action} wave {}", args.name), &status)
            })?
            .into_inner();
            if args.output.json {
                let document = output::wave_action_json(action, &args.name, response.wave.as_ref());
                output::emit(&serde_json::to_string_pretty(&document)?)?;
            } else {
                match response.wave {
                    Some(wave) => output::emit(&output::render_wave_line(&wave))?,
                    None => output::emit(&format!("wave {}: {action} accepted", args.name))?,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn retry_failed(
    controller: &str,
    client: &mut OperatorClient,
    args: RetryFailedArgs,
    actor: &str,
) -> anyhow::Result<ExitCode> {
    let name = args.wave.name;
    let retry = client
        .retry_failed(RetryFailedRequest {
            wave: name.clone(),
            actor: actor.to_owned(),
            start: args.start,
        })
        .await
        .map_err(|status| rpc_error(controller, &format!("retry failed of wave {name}"), &status))?
        .into_inner();
    if args.wave.output.json {
        output::emit(&serde_json::to_string_pretty(&output::retry_json(
            &name, &retry,
        ))?)?;
    } else {
        output::emit(&output::render_retry(&name, &retry))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(
    controller: &str,
    client: &mut OperatorClient,
    args: WaveArgs,
) -> anyhow::Result<ExitCode> {
    let status = client
        .get_status(StatusRequest {
            wave: args.name.clone(),
        })
        .await
        .map_err(|status| {
            rpc_error(
                controller,
                &format!("status of wave {}", args.name),
                &status,
            )
        })?
        .into_inner();
    let wave = status
        .waves
        .iter()
        .find(|wave| wave.name == args.name)
        .with_context(|| format!("the controller at {controller} sent no wave {}", args.name))?;
    let jobs: Vec<_> = status
        .jobs
        .iter()
        .filter(|job| job.wave == args.name)
        .cloned()
        .collect();
    if args.output.json {
        let document = output::wave_status_json(wave, &jobs);
        output::emit(&serde_json::to_string_pretty(&document)?)?;
    } else {
        output::emit(&output::render_wave_status(wave, &jobs))?;
    }
    Ok(ExitCode::SUCCESS)
}
