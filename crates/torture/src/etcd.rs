//! The workload's operations over etcd's v3 gRPC API (`--api etcd`): a
//! read is a Range, a write a Put, a CAS a Txn comparing the value (or,
//! for "absent", the create revision with 0) whose failure branch reads the
//! key. Values are the decimal text of the workload's numbers.

use paxlog_etcd_proto::etcdserverpb as pb;
use pb::kv_client::KvClient;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// One client channel per replica, dialled lazily (and again after a
/// failure) by tonic.
pub fn channels(nodes: &[SocketAddr]) -> anyhow::Result<Vec<KvClient<Channel>>> {
    nodes
        .iter()
        .map(|addr| {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_secs(1));
            Ok(KvClient::new(endpoint.connect_lazy()))
        })
        .collect()
}

/// How an etcd request ended, as the workload judges outcomes.
pub enum Answer {
    /// The key's value (`None`: absent).
    Read(Option<u64>),
    Written,
    /// Whether the CAS took, and the value the key holds when it did not.
    Cas {
        succeeded: bool,
        current: Option<Option<u64>>,
    },
}

pub enum EtcdError {
    /// Refused before it ran (bad request): it did nothing.
    Refused(String),
    /// No answer (timeout, connection lost, unavailable): it may have run.
    Unknown(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Refused(m) => write!(f, "refused: {m}"),
            EtcdError::Unknown(m) => write!(f, "unknown outcome: {m}"),
        }
    }
}

fn error_of(status: tonic::Status) -> EtcdError {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::InvalidArgument | Code::NotFound | Code::OutOfRange | Code::ResourceExhausted => {
            EtcdError::Refused(message)
        }
        _ => EtcdError::Unknown(message),
    }
}

fn value_of(kv: Option<&paxlog_etcd_proto::mvccpb::KeyValue>) -> Result<Option<u64>, EtcdError> {
    match kv {
        None => Ok(None),
        Some(kv) => std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                EtcdError::Refused(format!(
                    "unexpected value {:?}",
                    String::from_utf8_lossy(&kv.value)
                ))
            }),
    }
}

async fn within<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(error_of(status)),
        Err(_) => Err(EtcdError::Unknown("timed out".into())),
    }
}

pub async fn read(
    client: &mut KvClient<Channel>,
    key: &str,
    serializable: bool,
    timeout: Duration,
) -> Result<Answer, EtcdError> {
    let request = pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable,
        ..Default::default()
    };
    let response = within(timeout, client.range(request)).await?;
    value_of(response.kvs.first()).map(Answer::Read)
}

pub async fn write(
    client: &mut KvClient<Channel>,
    key: &str,
    value: u64,
    timeout: Duration,
) -> Result<Answer, EtcdError> {
    let request = pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_string().into_bytes(),
        ..Default::default()
    };
    within(timeout, client.put(request)).await?;
    Ok(Answer::Written)
}

pub async fn cas(
    client: &mut KvClient<Channel>,
    key: &str,
    expected: Option<u64>,
    value: u64,
    timeout: Duration,
) -> Result<Answer, EtcdError> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    use pb::request_op::Request;
    let key = key.as_bytes().to_vec();
    let compare = match expected {
        Some(e) => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::Value(e.to_string().into_bytes())),
            ..Default::default()
        },
        None => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        },
    };
    let request = pb::TxnRequest {
        compare: vec![compare],
        success: vec![pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: key.clone(),
                value: value.to_string().into_bytes(),
                ..Default::default()
            })),
        }],
        failure: vec![pb::RequestOp {
            request: Some(Request::RequestRange(pb::RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    };
    let response = within(timeout, client.txn(request)).await?;
    if response.succeeded {
        return Ok(Answer::Cas {
            succeeded: true,
            current: None,
        });
    }
    let current = match response.responses.first().and_then(|r| r.response.as_ref()) {
        Some(pb::response_op::Response::ResponseRange(range)) => Some(value_of(range.kvs.first())?),
        _ => None,
    };
    Ok(Answer::Cas {
        succeeded: false,
        current,
    })
}
