//! Process plumbing shared by every fleetmig binary: how logs are written
//! and how a process shuts down on signals. (Trace export joins here when
//! telemetry lands, so all binaries configure it the same way.)

use tokio_util::sync::CancellationToken;

/// Sends `tracing` output to stderr, filtered by `RUST_LOG` or `default_filter`,
/// with colours only when stderr is a terminal (log files stay plain).
pub fn init_tracing(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Cancels `shutdown` on the first SIGINT/SIGTERM (a graceful drain) and
/// exits the process at once on the second.
pub async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut terminate, mut interrupt) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(err), _) | (_, Err(err)) => {
            tracing::error!(error = %err, "cannot listen for signals; stopping");
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("shutdown requested; send the signal again to exit at once");
    shutdown.cancel();
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::warn!("second signal; exiting now");
    std::process::exit(130);
}
