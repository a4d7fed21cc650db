//! Child processes: finding the binaries, starting them with their output in a log
//! file, killing them, and making sure none outlives its test.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::process::{Child, Command};

/// Lines of a log quoted by [`log_tail`].
const LOG_TAIL_LINES: usize = 40;

/// `RUST_LOG` of every child.
const CHILD_RUST_LOG: &str = "info,fleetmig_worker=debug";

/// The directory holding the workspace's binaries (`target/debug`), found from the
/// running test executable (`target/debug/deps/integration-<hash>`).
fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the path of the test executable");
    let mut dir = exe
        .parent()
        .expect("the test executable has no parent directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    dir
}

/// Path of the workspace binary `name` (`fleetmig-controller`, `fleetmig-worker`,
/// `fleetmig-storage-node`, `fleetmig`).
///
/// # Panics
/// When it has not been built, with the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let path = binaries_dir().join(name);
    assert!(
        path.is_file(),
        "{} does not exist: the integration tests start the fleetmig binaries as processes; \
         build them first with `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The last lines of the log at `path`, indented, for failure messages.
pub fn log_tail(path: &Path) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => return format!("\n    (cannot read {}: {err})", path.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let mut tail = String::new();
    if start > 0 {
        tail.push_str(&format!("\n    ... ({start} earlier lines)"));
    }
    for line in &lines[start..] {
        tail.push_str("\n    ");
        tail.push_str(line);
    }
    tail
}

/// Process ids of the children started and not yet reaped, so the [`Cluster`] can kill
/// every one of them when a test ends, wherever their handles went.
///
/// A pid is removed as soon as its child has been waited for (or its handle dropped),
/// so a pid in here always belongs to our own, unreaped child and is never reused.
///
/// [`Cluster`]: crate::Cluster
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveChildren {
    pids: Arc<Mutex<HashMap<u64, i32>>>,
    next_token: Arc<AtomicU64>,
}

impl LiveChildren {
    fn add(&self, pid: i32) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(token, pid);
        token
    }

    fn remove(&self, token: u64) {
        self.lock().remove(&token);
    }

    /// Sends SIGKILL to every child still registered.
    pub(crate) fn kill_all(&self) {
        for pid in self.lock().values() {
            kill_pid(*pid);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, i32>> {
        self.pids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn kill_pid(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        // ESRCH (already gone) is fine.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// One long-running child process with its output in a log file.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    token: Option<u64>,
    live: LiveChildren,
}

impl ChildProcess {
    /// Starts `program args` as `name`, appending its stdout and stderr to `log_path`.
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[OsString],
        log_path: &Path,
        live: &LiveChildren,
    ) -> ChildProcess {
        let command = command(program, args, log_path);
        let mut command = command;
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name} ({}): {err}", program.display()));
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .expect("a just-started child has a pid");
        let token = live.add(pid);
        ChildProcess {
            name: name.to_owned(),
            child,
            log_path: log_path.to_owned(),
            exit: None,
            token: Some(token),
            live: live.clone(),
        }
    }

    /// The name the child was started under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.reaped(status);
        }
        self.exit
    }

    /// Panics with its log tail if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_exit() {
            panic!(
                "{} exited unexpectedly ({status}); log {}:{}",
                self.name,
                self.log_path.display(),
                self.log_tail()
            );
        }
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub async fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        // Fails only when the child has already exited, which `wait` then reports.
        let _ = self.child.start_kill();
        let status = self
            .child
            .wait()
            .await
            .unwrap_or_else(|err| panic!("cannot wait for {}: {err}", self.name));
        self.reaped(status);
        status
    }

    /// Its process id, while it has not been reaped.
    pub fn pid(&mut self) -> Option<i32> {
        if self.try_exit().is_some() {
            return None;
        }
        self.child.id().and_then(|id| i32::try_from(id).ok())
    }

    /// Sends SIGSTOP: the process freezes (its sockets stay open, nothing answers) until
    /// [`ChildProcess::resume`].
    ///
    /// # Panics
    /// When it has exited.
    pub fn pause(&mut self) {
        self.signal(rustix::process::Signal::STOP, "SIGSTOP");
    }

    /// Sends SIGCONT to a process stopped by [`ChildProcess::pause`].
    ///
    /// # Panics
    /// When it has exited.
    pub fn resume(&mut self) {
        self.signal(rustix::process::Signal::CONT, "SIGCONT");
    }

    fn signal(&mut self, signal: rustix::process::Signal, signal_name: &str) {
        let pid = self.pid().unwrap_or_else(|| {
            panic!(
                "cannot send {signal_name} to {}: it has exited; log {}:{}",
                self.name,
                self.log_path.display(),
                self.log_tail()
            )
        });
        // The pid belongs to our own unreaped child, so it cannot have been reused.
        let target = rustix::process::Pid::from_raw(pid).expect("a child's pid is positive");
        rustix::process::kill_process(target, signal)
            .unwrap_or_else(|err| panic!("cannot send {signal_name} to {}: {err}", self.name));
    }

    /// Waits until it exits by itself.
    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let status = self
            .child
            .wait()
            .await
            .unwrap_or_else(|err| panic!("cannot wait for {}: {err}", self.name));
        self.reaped(status);
        status
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.exit = Some(status);
        if let Some(token) = self.token.take() {
            self.live.remove(token);
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // `kill_on_drop` is the backstop; this makes the kill immediate.
            let _ = self.child.start_kill();
        }
        if let Some(token) = self.token.take() {
            self.live.remove(token);
        }
    }
}

/// Runs `program args` to completion with its output appended to `log_path`.
///
/// # Panics
/// When it cannot start or exits unsuccessfully, with its log tail.
pub(crate) async fn run_to_completion(
    name: &str,
    program: &Path,
    args: &[OsString],
    log_path: &Path,
) {
    let status = command(program, args, log_path)
        .status()
        .await
        .unwrap_or_else(|err| panic!("cannot start {name} ({}): {err}", program.display()));
    assert!(
        status.success(),
        "{name} failed ({status}); log {}:{}",
        log_path.display(),
        log_tail(log_path)
    );
}

fn command(program: &Path, args: &[OsString], log_path: &Path) -> Command {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap_or_else(|err| panic!("cannot open log file {}: {err}", log_path.display()));
    // Several runs of one child (restarts) share its log; mark where each begins.
    let rendered: Vec<String> = args
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    writeln!(
        log,
        "===== harness: starting {} {}",
        program.display(),
        rendered.join(" ")
    )
    .unwrap_or_else(|err| panic!("cannot write log file {}: {err}", log_path.display()));
    let stdout = log
        .try_clone()
        .unwrap_or_else(|err| panic!("cannot reuse log file {}: {err}", log_path.display()));
    let mut command = Command::new(program);
    command
        .args(args)
        .env("RUST_LOG", CHILD_RUST_LOG)
        // Every process of the suite talks mutual TLS (see pki.rs).
        .env_remove("FLEETMIG_INSECURE_PLAINTEXT")
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    command
}
