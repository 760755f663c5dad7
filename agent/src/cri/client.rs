//! One connection to a CRI socket, shared by every pod. The channel is
//! lazy and reconnects by itself, so a containerd that restarts is picked
//! up again without the agent noticing more than failed calls meanwhile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use super::v1::image_service_client::ImageServiceClient;
use super::v1::runtime_service_client::RuntimeServiceClient;

/// ExecSync answers carry a command's whole output.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The runtime and image services of one CRI endpoint.
#[derive(Clone, Debug)]
pub struct Cri {
    pub socket: PathBuf,
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    /// A client of the CRI socket at `socket` (`unix://` prefix allowed);
    /// nothing is dialled until the first call.
    pub fn new(socket: &Path) -> Cri {
        let socket = strip_scheme(socket);
        let dial = socket.clone();
        let channel = Endpoint::from_static("http://cri.local")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let path = dial.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
        Cri {
            socket,
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE),
            images: ImageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE),
        }
    }

    /// The runtime's name and version, or why it does not answer.
    pub async fn version(&self) -> Result<(String, String), tonic::Status> {
        let mut runtime = self.runtime.clone();
        let reply = runtime
            .version(super::v1::VersionRequest {
                version: "v1".into(),
            })
            .await?
            .into_inner();
        Ok((reply.runtime_name, reply.runtime_version))
    }
}

/// `unix:///run/x.sock` and `/run/x.sock` name the same socket.
fn strip_scheme(socket: &Path) -> PathBuf {
    let text = socket.to_string_lossy();
    match text.strip_prefix("unix://") {
        Some(rest) => PathBuf::from(rest),
        None => socket.to_path_buf(),
    }
}

/// A gRPC error as Go's grpc-go prints it, which is how the kubelet shows
/// runtime errors in pod statuses and events.
pub fn go_error(status: &tonic::Status) -> String {
    format!(
        "rpc error: code = {} desc = {}",
        code_name(status.code()),
        status.message()
    )
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_like_grpc_go() {
        let s = tonic::Status::not_found("image \"x\" not found");
        assert_eq!(
            go_error(&s),
            "rpc error: code = NotFound desc = image \"x\" not found"
        );
        assert_eq!(
            strip_scheme(Path::new("unix:///run/c.sock")),
            Path::new("/run/c.sock")
        );
    }
}
