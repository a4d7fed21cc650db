//! Connecting to the controller's `OperatorService`, and turning gRPC
//! failures into messages that say what failed.
//!
//! `--controller` may name several controllers of one fleet (`a,b,c`): any of
//! them serves operators. They are tried in order and the first that answers
//! is used; one that cannot be connected to, or answers `UNAVAILABLE` (or not
//! at all) to a cheap probe, is passed over.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use fleetmig_proto::v1::ListStorageNodesRequest;
use fleetmig_proto::v1::operator_service_client::OperatorServiceClient;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// How long establishing the connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a unary call may take (for streams: until the response starts).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a controller may take to answer the probe before the next one is tried.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// An operator client bound to one controller URL.
pub type OperatorClient = OperatorServiceClient<Channel>;

/// The URLs of `--controller`: one URL or a comma-separated list.
fn controller_urls(list: &str) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = list
        .split(',')
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect();
    if urls.is_empty() {
        bail!("no controller url given");
    }
    Ok(urls)
}

static TRANSPORT: std::sync::RwLock<Option<fleetmig_auth::Transport>> =
    std::sync::RwLock::new(None);

/// Sets the transport of every connection: TLS with `--ca` (and the
/// operator's `--cert`/`--key`), else plaintext (`http://` URLs only).
pub fn set_tls(
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let transport = match ca {
        None => fleetmig_auth::Transport::Plaintext,
        Some(ca) => {
            let files = fleetmig_auth::tls::TlsFiles {
                ca: ca.to_path_buf(),
                cert: cert.map(std::path::Path::to_path_buf),
                key: key.map(std::path::Path::to_path_buf),
            };
            fleetmig_auth::Transport::Tls(std::sync::Arc::new(files.load()?))
        }
    };
    set_transport(transport);
    Ok(())
}

/// Sets the transport of every connection made from now on (the demo sets
/// its own fleet's).
pub fn set_transport(transport: fleetmig_auth::Transport) {
    *TRANSPORT
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(transport);
}

fn transport() -> fleetmig_auth::Transport {
    TRANSPORT
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or(fleetmig_auth::Transport::Plaintext)
}

/// Connects to the first controller of `urls` (one URL or a comma-separated
/// list, tried in order) that answers, with fleetmig's message-size limits.
/// The error names every address tried.
pub async fn connect(urls: &str) -> anyhow::Result<OperatorClient> {
    let urls = controller_urls(urls)?;
    let endpoints = urls
        .iter()
        .map(|url| {
            transport()
                .endpoint(url)
                .with_context(|| format!("invalid controller url {url:?}"))
                .map(|endpoint| {
                    endpoint
                        .connect_timeout(CONNECT_TIMEOUT)
                        .timeout(REQUEST_TIMEOUT)
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let single = urls.len() == 1;
    let mut failures = Vec::new();
    for (index, (url, endpoint)) in urls.iter().zip(endpoints).enumerate() {
        // The last candidate is not probed: its first real call says what is wrong.
        let probe = index + 1 < urls.len();
        match connect_one(endpoint, probe).await {
            Ok(client) => {
                if !failures.is_empty() {
                    tracing::info!(controller = %url, passed_over = ?failures, "using the next controller");
                }
                return Ok(client);
            }
            Err(error) if single => {
                return Err(error.context(format!("cannot reach controller at {url}")));
            }
            Err(error) => {
                let reason = crate::output::error_text(&error);
                tracing::debug!(controller = %url, %reason, "controller not usable; trying the next one");
                failures.push(format!("{url}: {reason}"));
            }
        }
    }
    bail!(
        "cannot reach any controller (tried {}): {}",
        urls.join(", "),
        failures.join("; ")
    )
}

/// Connects to one controller; with `probe`, also checks that it answers.
async fn connect_one(endpoint: Endpoint, probe: bool) -> anyhow::Result<OperatorClient> {
    let channel = endpoint.connect().await?;
    let mut client = OperatorServiceClient::new(channel)
        .max_decoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES)
        .max_encoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES);
    if probe {
        let mut request = tonic::Request::new(ListStorageNodesRequest {});
        request.set_timeout(PROBE_TIMEOUT);
        if let Err(status) = client.list_storage_nodes(request).await {
            // Any answer but "unavailable" (or none in time) comes from a controller that
            // serves operators.
            if matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
            ) {
                bail!("{:?}: {}", status.code(), status.message());
            }
        }
    }
    Ok(client)
}

/// "controller at URL", or "controllers at A, B" for a list.
fn controllers_at(urls: &str) -> String {
    if urls.contains(',') {
        format!(
            "controllers at {}",
            urls.split(',').collect::<Vec<_>>().join(", ")
        )
    } else {
        format!("controller at {urls}")
    }
}

/// An error for a failed call `what` (e.g. "start wave pilot") to the controller at `url`
/// (or one of the list `url`).
pub fn rpc_error(url: &str, what: &str, status: &tonic::Status) -> anyhow::Error {
    let message = status.message();
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => {
            anyhow!("cannot reach {} ({what}): {message}", controllers_at(url))
        }
        Code::NotFound => anyhow!("{what}: not found: {message}"),
        Code::InvalidArgument => anyhow!("{what}: invalid: {message}"),
        Code::FailedPrecondition => anyhow!("{what}: refused: {message}"),
        Code::Unimplemented => anyhow!(
            "{what}: the {} does not implement this call (is it an older version?)",
            controllers_at(url)
        ),
        code => anyhow!("{what} failed ({code:?}): {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmig_proto::v1;
    use fleetmig_proto::v1::operator_service_server::{OperatorService, OperatorServiceServer};
    use tonic::{Request, Response, Status};

    /// A controller that answers `GetStatus` with its name and the probe with `probe`.
    #[derive(Clone)]
    struct Fake {
        name: &'static str,
        probe: Code,
    }

    fn nope<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("fake"))
    }

    #[tonic::async_trait]
    impl OperatorService for Fake {
        async fn validate_plan(
            &self,
            _: Request<v1::PlanRequest>,
        ) -> Result<Response<v1::ValidatePlanResponse>, Status> {
            nope()
        }
        async fn apply_plan(
            &self,
            _: Request<v1::PlanRequest>,
        ) -> Result<Response<v1::ApplyPlanResponse>, Status> {
            nope()
        }
        async fn start_wave(
            &self,
            _: Request<v1::WaveRequest>,
        ) -> Result<Response<v1::WaveResponse>, Status> {
            nope()
        }
        async fn pause_wave(
            &self,
            _: Request<v1::WaveRequest>,
        ) -> Result<Response<v1::WaveResponse>, Status> {
            nope()
        }
        async fn resume_wave(
            &self,
            _: Request<v1::WaveRequest>,
        ) -> Result<Response<v1::WaveResponse>, Status> {
            nope()
        }
        async fn abort_wave(
            &self,
            _: Request<v1::WaveRequest>,
        ) -> Result<Response<v1::WaveResponse>, Status> {
            nope()
        }
        async fn promote_wave(
            &self,
            _: Request<v1::WaveRequest>,
        ) -> Result<Response<v1::WaveResponse>, Status> {
            nope()
        }
        async fn retry_failed(
            &self,
            _: Request<v1::RetryFailedRequest>,
        ) -> Result<Response<v1::RetryFailedResponse>, Status> {
            nope()
        }
        async fn get_status(
            &self,
            _: Request<v1::StatusRequest>,
        ) -> Result<Response<v1::StatusResponse>, Status> {
            Ok(Response::new(v1::StatusResponse {
                controller_id: self.name.to_owned(),
                ..v1::StatusResponse::default()
            }))
        }
        async fn list_machines(
            &self,
            _: Request<v1::ListMachinesRequest>,
        ) -> Result<Response<v1::ListMachinesResponse>, Status> {
            nope()
        }
        async fn list_storage_nodes(
            &self,
            _: Request<v1::ListStorageNodesRequest>,
        ) -> Result<Response<v1::ListStorageNodesResponse>, Status> {
            match self.probe {
                Code::Ok => Ok(Response::new(v1::ListStorageNodesResponse::default())),
                code => Err(Status::new(code, "probe answer (fake)")),
            }
        }
        type WatchEventsStream = tokio_stream::Empty<Result<v1::Event, Status>>;
        async fn watch_events(
            &self,
            _: Request<v1::WatchEventsRequest>,
        ) -> Result<Response<Self::WatchEventsStream>, Status> {
            nope()
        }
        async fn create_enrollment_token(
            &self,
            _: Request<v1::CreateEnrollmentTokenRequest>,
        ) -> Result<Response<v1::EnrollmentToken>, Status> {
            nope()
        }
        async fn approve_machine(
            &self,
            _: Request<v1::MachineRequest>,
        ) -> Result<Response<v1::MachineActionResponse>, Status> {
            nope()
        }
        async fn revoke_machine(
            &self,
            _: Request<v1::MachineRequest>,
        ) -> Result<Response<v1::MachineActionResponse>, Status> {
            nope()
        }
        async fn list_pending_enrollments(
            &self,
            _: Request<v1::ListPendingEnrollmentsRequest>,
        ) -> Result<Response<v1::ListPendingEnrollmentsResponse>, Status> {
            nope()
        }
        async fn recover_migration(
            &self,
            _: Request<v1::RecoverMigrationRequest>,
        ) -> Result<Response<v1::RecoverMigrationResponse>, Status> {
            nope()
        }
    }

    async fn serve(fake: Fake) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(OperatorServiceServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{address}")
    }

    /// A loopback address nobody listens on.
    fn closed() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    async fn answering(urls: &str) -> anyhow::Result<String> {
        let mut client = connect(urls).await?;
        Ok(client
            .get_status(v1::StatusRequest::default())
            .await?
            .into_inner()
            .controller_id)
    }

    #[test]
    fn call_errors_name_the_controllers() {
        let status = Status::unavailable("connection reset");
        assert_eq!(
            rpc_error("http://a:1", "get status", &status).to_string(),
            "cannot reach controller at http://a:1 (get status): connection reset"
        );
        assert_eq!(
            rpc_error("http://a:1,http://b:2", "get status", &status).to_string(),
            "cannot reach controllers at http://a:1, http://b:2 (get status): connection reset"
        );
    }

    #[test]
    fn lists_split_trim_and_skip_empty_pieces() {
        assert_eq!(
            controller_urls(" http://a:1 ,http://b:2,").unwrap(),
            ["http://a:1", "http://b:2"]
        );
        assert!(controller_urls(" , ").is_err());
    }

    #[tokio::test]
    async fn the_first_controller_that_answers_is_used() {
        let (a, b) = (
            serve(Fake {
                name: "a",
                probe: Code::Ok,
            })
            .await,
            serve(Fake {
                name: "b",
                probe: Code::Ok,
            })
            .await,
        );
        assert_eq!(answering(&format!("{a},{b}")).await.unwrap(), "a");
        assert_eq!(answering(&format!("{},{b}", closed())).await.unwrap(), "b");
        // A controller that is up but unavailable (e.g. still loading) is passed over; one
        // that answers otherwise is used.
        let busy = serve(Fake {
            name: "busy",
            probe: Code::Unavailable,
        })
        .await;
        assert_eq!(answering(&format!("{busy},{b}")).await.unwrap(), "b");
        let old = serve(Fake {
            name: "old",
            probe: Code::Unimplemented,
        })
        .await;
        assert_eq!(answering(&format!("{old},{b}")).await.unwrap(), "old");
    }

    #[tokio::test]
    async fn the_error_names_every_address_tried() {
        let (first, second) = (closed(), closed());
        let error = connect(&format!("{first}, {second}")).await.unwrap_err();
        let text = crate::output::error_text(&error);
        assert!(text.starts_with("cannot reach any controller"), "{text}");
        assert!(text.contains(&first) && text.contains(&second), "{text}");
        // One address: the message it always had.
        let error = connect(&first).await.unwrap_err();
        let text = crate::output::error_text(&error);
        assert!(
            text.starts_with(&format!("cannot reach controller at {first}")),
            "{text}"
        );
        assert!(connect("http://a:1,not a url").await.is_err());
    }
}
