//! The demo's child processes: finding the sibling binaries, starting them
//! with their stderr in a log file, waiting for ready files, and stopping them.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::process::{Child, Command};

/// How long a child has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of a child's log quoted when it fails.
const LOG_TAIL_LINES: usize = 15;

/// Paths of the fleetmig binaries the demo starts.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `fleetmig-controller`.
    pub controller: PathBuf,
    /// `fleetmig-worker`.
    pub worker: PathBuf,
    /// `fleetmig-storage-node`.
    pub storage_node: PathBuf,
}

impl Binaries {
    /// The binaries next to the running `fleetmig` executable.
    pub fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the path of this executable")?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
        Self::locate_in(dir)
    }

    /// The binaries in `dir`; the error names every one that is missing.
    pub fn locate_in(dir: &Path) -> anyhow::Result<Self> {
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() { Ok(path) } else { Err(path) }
        };
        match (
            find("fleetmig-controller"),
            find("fleetmig-worker"),
            find("fleetmig-storage-node"),
        ) {
            (Ok(controller), Ok(worker), Ok(storage_node)) => Ok(Self {
                controller,
                worker,
                storage_node,
            }),
            (controller, worker, storage_node) => {
                let missing: Vec<String> = [controller, worker, storage_node]
                    .into_iter()
                    .filter_map(Result::err)
                    .map(|path| path.display().to_string())
                    .collect();
                bail!(
                    "the demo needs the other fleetmig binaries next to this one, but {} {} missing; \
                     build them all with `cargo build --release` and run target/release/fleetmig demo",
                    missing.join(", "),
                    if missing.len() == 1 { "is" } else { "are" }
                )
            }
        }
    }
}

/// Opens `log_path` (truncating) for a child's stdout and stderr.
fn log_stdio(log_path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file = std::fs::File::create(log_path)
        .with_context(|| format!("cannot create log file {}", log_path.display()))?;
    let clone = file
        .try_clone()
        .with_context(|| format!("cannot reuse log file {}", log_path.display()))?;
    Ok((Stdio::from(clone), Stdio::from(file)))
}

fn command(program: &Path, args: &[OsString], log_path: &Path) -> anyhow::Result<Command> {
    let (stdout, stderr) = log_stdio(log_path)?;
    let mut command = Command::new(program);
    command
        .args(args)
        // Whatever the caller's environment says, the demo runs mutual TLS.
        .env_remove("FLEETMIG_INSECURE_PLAINTEXT")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Backstop: a child still running when its handle drops is killed.
        .kill_on_drop(true);
    Ok(command)
}

/// The last lines of a log file, indented, for error messages.
pub fn log_tail(log_path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log_path) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..]
        .iter()
        .map(|line| format!("\n    {line}"))
        .collect()
}

/// Runs `program` to completion; an error (with the log's tail) unless it exits 0.
pub async fn run_to_completion(
    name: &str,
    program: &Path,
    args: &[OsString],
    log_path: &Path,
) -> anyhow::Result<()> {
    let status = command(program, args, log_path)?
        .status()
        .await
        .with_context(|| format!("cannot start {name} ({})", program.display()))?;
    if !status.success() {
        bail!(
            "{name} failed ({status}); log {}:{}",
            log_path.display(),
            log_tail(log_path)
        );
    }
    Ok(())
}

/// A long-running child.
#[derive(Debug)]
struct ManagedChild {
    name: String,
    child: Child,
    log_path: PathBuf,
}

/// The demo's long-running children, stopped together by [`Fleet::stop_all`].
#[derive(Debug)]
pub struct Fleet {
    log_dir: PathBuf,
    children: Vec<ManagedChild>,
}

impl Fleet {
    /// An empty fleet logging to `log_dir/<name>.log`.
    pub fn new(log_dir: PathBuf) -> Self {
        Self {
            log_dir,
            children: Vec::new(),
        }
    }

    /// Where the child `name` logs.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Starts `program` as the child `name`.
    pub fn spawn(&mut self, name: &str, program: &Path, args: &[OsString]) -> anyhow::Result<()> {
        let log_path = self.log_path(name);
        let child = command(program, args, &log_path)?
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        tracing::info!(name, pid = child.id(), log = %log_path.display(), "started");
        self.children.push(ManagedChild {
            name: name.to_owned(),
            child,
            log_path,
        });
        Ok(())
    }

    /// An error naming the first child that has exited, with its log's tail.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for managed in &mut self.children {
            if let Some(status) = managed
                .child
                .try_wait()
                .with_context(|| format!("cannot check on {}", managed.name))?
            {
                bail!(
                    "{} exited unexpectedly ({status}); log {}:{}",
                    managed.name,
                    managed.log_path.display(),
                    log_tail(&managed.log_path)
                );
            }
        }
        Ok(())
    }

    /// Waits until the child `name` has written its address to `ready_file`.
    pub async fn wait_for_ready_file(
        &mut self,
        name: &str,
        ready_file: &Path,
        timeout: Duration,
    ) -> anyhow::Result<SocketAddr> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::fs::read_to_string(ready_file).await {
                Ok(text) => {
                    return text.trim().parse().with_context(|| {
                        format!("{name} wrote {:?} to {}", text.trim(), ready_file.display())
                    });
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("cannot read {}", ready_file.display()));
                }
            }
            self.check_alive()?;
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{name} did not write {} within {}s; log {}:{}",
                    ready_file.display(),
                    timeout.as_secs(),
                    self.log_path(name).display(),
                    log_tail(&self.log_path(name))
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every child, last started first: SIGTERM, then SIGKILL for
    /// those still running after a grace period.
    pub async fn stop_all(&mut self) {
        let children = std::mem::take(&mut self.children);
        for managed in children.iter().rev() {
            terminate(&managed.child);
        }
        let waits = children.into_iter().rev().map(|mut managed| {
            tokio::spawn(async move {
                let exited: Option<ExitStatus> =
                    match tokio::time::timeout(STOP_GRACE, managed.child.wait()).await {
                        Ok(Ok(status)) => Some(status),
                        Ok(Err(_)) | Err(_) => None,
                    };
                if exited.is_none() {
                    tracing::warn!(name = %managed.name, "did not stop after SIGTERM; killing");
                    let _ = managed.child.kill().await;
                }
            })
        });
        let waits: Vec<_> = waits.collect();
        for wait in waits {
            let _ = wait.await;
        }
    }
}

/// Sends SIGTERM to `child` if it is still running.
fn terminate(child: &Child) {
    let Some(pid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(err) = rustix::process::kill_process(pid, rustix::process::Signal::TERM) {
        tracing::debug!(pid = pid.as_raw_nonzero().get(), error = %err, "cannot signal child");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_are_named_with_a_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("fleetmig-worker"), "").expect("write");
        let err = Binaries::locate_in(dir.path()).expect_err("two are missing");
        let text = err.to_string();
        assert!(text.contains("fleetmig-controller"), "{text}");
        assert!(text.contains("fleetmig-storage-node"), "{text}");
        assert!(!text.contains("fleetmig-worker,"), "{text}");
        assert!(text.contains("cargo build --release"), "{text}");

        std::fs::write(dir.path().join("fleetmig-controller"), "").expect("write");
        std::fs::write(dir.path().join("fleetmig-storage-node"), "").expect("write");
        let binaries = Binaries::locate_in(dir.path()).expect("all present");
        assert_eq!(binaries.worker, dir.path().join("fleetmig-worker"));
    }

    #[tokio::test]
    async fn a_failing_child_reports_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("sh.log");
        let args: Vec<OsString> = vec!["-c".into(), "echo boom >&2; exit 3".into()];
        let err = run_to_completion("sh", Path::new("/bin/sh"), &args, &log)
            .await
            .expect_err("exit 3");
        let text = err.to_string();
        assert!(text.contains("boom"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
    }

    #[tokio::test]
    async fn ready_file_wait_notices_an_early_exit_and_stop_all_terminates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fleet = Fleet::new(dir.path().to_owned());
        let args: Vec<OsString> = vec!["-c".into(), "echo cannot bind >&2; exit 1".into()];
        fleet
            .spawn("early", Path::new("/bin/sh"), &args)
            .expect("spawn");
        let err = fleet
            .wait_for_ready_file("early", &dir.path().join("never"), Duration::from_secs(10))
            .await
            .expect_err("child exits first");
        assert!(err.to_string().contains("cannot bind"), "{err}");

        let mut fleet = Fleet::new(dir.path().to_owned());
        let args: Vec<OsString> = vec![
            "-c".into(),
            format!(
                "cd {} && echo 127.0.0.1:9 > ready.tmp && mv ready.tmp ready && exec sleep 60",
                dir.path().display()
            )
            .into(),
        ];
        fleet
            .spawn("sleeper", Path::new("/bin/sh"), &args)
            .expect("spawn");
        let addr = fleet
            .wait_for_ready_file(
                "sleeper",
                &dir.path().join("ready"),
                Duration::from_secs(10),
            )
            .await
            .expect("ready");
        assert_eq!(addr.port(), 9);
        fleet.check_alive().expect("still running");
        let started = std::time::Instant::now();
        fleet.stop_all().await;
        assert!(started.elapsed() < STOP_GRACE, "SIGTERM was enough");
        fleet.check_alive().expect("no children left");
    }
}
