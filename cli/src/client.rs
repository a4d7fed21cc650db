//! Connecting to the controller's `OperatorService`, and turning gRPC
//! failures into messages that say what failed.

use std::time::Duration;

use anyhow::{Context, anyhow};
use fleetmig_proto::v1::operator_service_client::OperatorServiceClient;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// How long establishing the connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a unary call may take (for streams: until the response starts).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An operator client bound to one controller URL.
pub type OperatorClient = OperatorServiceClient<Channel>;

/// Connects to the controller at `url`, with fleetmig's message-size limits.
pub async fn connect(url: &str) -> anyhow::Result<OperatorClient> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid controller url {url:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach controller at {url}"))?;
    Ok(OperatorServiceClient::new(channel)
        .max_decoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES)
        .max_encoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES))
}

/// An error for a failed call `what` (e.g. "start wave pilot") to the controller at `url`.
pub fn rpc_error(url: &str, what: &str, status: &tonic::Status) -> anyhow::Error {
    let message = status.message();
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => {
            anyhow!("cannot reach controller at {url} ({what}): {message}")
        }
        Code::NotFound => anyhow!("{what}: not found: {message}"),
        Code::InvalidArgument => anyhow!("{what}: invalid: {message}"),
        Code::FailedPrecondition => anyhow!("{what}: refused: {message}"),
        Code::Unimplemented => anyhow!(
            "{what}: the controller at {url} does not implement this call (is it an older version?)"
        ),
        code => anyhow!("{what} failed ({code:?}): {message}"),
    }
}
