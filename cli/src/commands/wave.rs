//! `fleetmig wave start|pause|resume|abort NAME`.

use std::process::ExitCode;

use fleetmig_proto::v1::WaveRequest;

use crate::cli::WaveCommand;
use crate::client::{self, rpc_error};
use crate::output;

/// Sends the wave control and prints the wave's state afterwards.
pub async fn run(controller: &str, command: WaveCommand, actor: &str) -> anyhow::Result<ExitCode> {
    let (args, action) = command.parts();
    let request = WaveRequest {
        wave: args.name.clone(),
        actor: actor.to_owned(),
    };
    let mut client = client::connect(controller).await?;
    let response = match command {
        WaveCommand::Start(_) => client.start_wave(request).await,
        WaveCommand::Pause(_) => client.pause_wave(request).await,
        WaveCommand::Resume(_) => client.resume_wave(request).await,
        WaveCommand::Abort(_) => client.abort_wave(request).await,
    }
    .map_err(|status| rpc_error(controller, &format!("{action} wave {}", args.name), &status))?
    .into_inner();
    match response.wave {
        Some(wave) => output::emit(&output::render_wave_line(&wave))?,
        None => output::emit(&format!("wave {}: {action} accepted", args.name))?,
    }
    Ok(ExitCode::SUCCESS)
}
