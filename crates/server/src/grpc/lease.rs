//! etcd's Lease service over paxlog's leases: grants and revokes go
//! through the log, keep-alives to the leader (which alone decides expiry
//! and carries it through the log as a revoke).

use super::*;
use crate::driver::{LeaseAction, LeaseInfo};
use paxlog_kv::{MAX_LEASE_TTL_MS, MIN_LEASE_TTL_MS};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Streaming};

/// Keep-alive answers queued for one stream.
const KEEPALIVE_QUEUE: usize = 64;

pub struct LeaseApi(pub EtcdApi);

impl EtcdApi {
    async fn lease(&self, action: LeaseAction) -> Result<LeaseInfo, Status> {
        self.lease_or_leader(action).await.map_err(status_of)
    }

    async fn lease_or_leader(&self, action: LeaseAction) -> Result<LeaseInfo, DriverError> {
        let (reply, answer) = oneshot::channel();
        let input = DriverInput::Read(ReadRequest {
            query: Query::Lease { action, reply },
            consistency: Consistency::Linearizable,
            deadline: self.state.deadline(),
        });
        self.state.call(input, answer).await
    }

    /// One keep-alive: the TTL in seconds (0: the lease is gone). Only the
    /// leader takes them; a follower passes them on to the leader's gRPC
    /// API over one stream per client stream (`forward`), as etcd does.
    async fn keep_alive(&self, id: i64, forward: &mut Option<Forward>) -> Result<i64, Status> {
        let Ok(lease) = lease_id(id) else {
            return Ok(0);
        };
        match self.lease_or_leader(LeaseAction::KeepAlive(lease)).await {
            Ok(info) => Ok(seconds(info.ttl_ms)),
            // etcd answers a lease that is gone with TTL 0.
            Err(DriverError::Rejected {
                kind: ErrorKind::LeaseNotFound,
                ..
            }) => Ok(0),
            Err(DriverError::NotLeader {
                leader: Some(leader),
            }) => self.forward_keep_alive(leader, id, forward).await,
            Err(error) => Err(status_of(error)),
        }
    }

    async fn forward_keep_alive(
        &self,
        leader: u32,
        id: i64,
        forward: &mut Option<Forward>,
    ) -> Result<i64, Status> {
        let unreachable = |why: String| {
            Status::unavailable(format!(
                "etcdserver: not the leader, and the leader (member {:x}) cannot be reached: {why}",
                member_id(leader)
            ))
        };
        if forward.as_ref().is_none_or(|f| f.leader != leader) {
            *forward = None;
            let status = self.status().await?;
            let Some(addr) = status.membership.grpc_addresses.get(&leader) else {
                return Err(unreachable("its gRPC address is not known yet".into()));
            };
            *forward = Some(
                Forward::open(
                    leader,
                    addr,
                    self.forward_token.as_deref(),
                    self.forward_tls.as_ref(),
                )
                .await
                .map_err(|e| unreachable(e.to_string()))?,
            );
        }
        let Some(f) = forward.as_mut() else {
            return Err(unreachable("no stream".into()));
        };
        match f.keep_alive(id).await {
            Ok(ttl) => Ok(ttl),
            Err(status) => {
                *forward = None;
                Err(status)
            }
        }
    }
}

/// A keep-alive stream to the leader, for a follower's client.
pub(super) struct Forward {
    leader: u32,
    requests: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    responses: Streaming<pb::LeaseKeepAliveResponse>,
}

impl Forward {
    async fn open(
        leader: u32,
        addr: &str,
        token: Option<&str>,
        tls: Option<&crate::tls::GrpcDialer>,
    ) -> Result<Forward, Status> {
        use pb::lease_client::LeaseClient;
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::unavailable(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(2));
        let channel = match tls {
            None => endpoint.connect().await,
            Some(dialer) => {
                let dialer = dialer.clone();
                let addr = addr.to_string();
                // TLS on our side of tonic: a TCP connection, then the
                // handshake, checking the name every replica carries.
                let connector = tower::service_fn(move |_: tonic::transport::Uri| {
                    let (dialer, addr) = (dialer.clone(), addr.clone());
                    async move {
                        let tcp = tokio::net::TcpStream::connect(&addr).await?;
                        let tls = dialer
                            .connector
                            .connect(dialer.server_name.clone(), tcp)
                            .await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                    }
                });
                endpoint.connect_with_connector(connector).await
            }
        }
        .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut client = LeaseClient::new(channel);
        let (requests, outbound) = mpsc::channel(KEEPALIVE_QUEUE);
        let mut request = Request::new(ReceiverStream::new(outbound));
        if let Some(token) = token.and_then(|t| t.parse().ok()) {
            request.metadata_mut().insert("token", token);
        }
        let responses = client.lease_keep_alive(request).await?.into_inner();
        Ok(Forward {
            leader,
            requests,
            responses,
        })
    }

    async fn keep_alive(&mut self, id: i64) -> Result<i64, Status> {
        self.requests
            .send(pb::LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| Status::unavailable("the leader's keep-alive stream closed"))?;
        match self.responses.message().await? {
            Some(response) => Ok(response.ttl),
            None => Err(Status::unavailable("the leader's keep-alive stream closed")),
        }
    }
}

fn lease_id(id: i64) -> Result<u64, Status> {
    u64::try_from(id)
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| Status::not_found("etcdserver: requested lease not found"))
}

/// Seconds, rounded up (a lease with 1 ms left is not expired).
fn seconds(ms: u64) -> i64 {
    revision_i64(ms.div_ceil(1000))
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseApi {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        if request.id != 0 {
            return Err(Status::invalid_argument(
                "paxlog numbers leases itself: grant with ID 0",
            ));
        }
        // etcd raises a TTL below its minimum to the minimum; so do we.
        let ttl_ms = u64::try_from(request.ttl)
            .unwrap_or(0)
            .saturating_mul(1000)
            .clamp(MIN_LEASE_TTL_MS, MAX_LEASE_TTL_MS);
        let output = self.0.write(KvCommand::LeaseGrant { ttl_ms }).await?;
        let ApplyResult::Ok {
            value: Some(report),
        } = &output.result
        else {
            return Err(Status::internal("a lease grant answered without its id"));
        };
        let id = report.get("lease").and_then(Value::as_u64).unwrap_or(0);
        Ok(Response::new(pb::LeaseGrantResponse {
            header: Some(self.0.header(revision_of_round(output.slot.0))),
            id: revision_i64(id),
            ttl: seconds(ttl_ms),
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let lease = lease_id(request.into_inner().id)?;
        let output = self.0.write(KvCommand::LeaseRevoke { lease }).await?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(self.0.header(revision_of_round(output.slot.0))),
        }))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_QUEUE);
        let api = self.0.clone();
        tokio::spawn(async move {
            let mut forward: Option<Forward> = None;
            loop {
                let message = tokio::select! {
                    message = inbound.message() => message,
                    () = tx.closed() => return,
                };
                let Ok(Some(request)) = message else {
                    return;
                };
                let answer = api.keep_alive(request.id, &mut forward).await;
                let response = answer.map(|ttl| pb::LeaseKeepAliveResponse {
                    header: Some(
                        api.header(api.state.metrics().published.snapshot().applied_round),
                    ),
                    id: request.id,
                    ttl,
                });
                let failed = response.is_err();
                if tx.send(response).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let lease = lease_id(request.id)?;
        let revision = self.0.state.metrics().published.snapshot().applied_round;
        match self.0.lease(LeaseAction::Get(lease)).await {
            Ok(info) => Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(self.0.header(revision)),
                id: request.id,
                // Only the leader keeps deadlines; elsewhere the whole TTL
                // is the best bound known. (The leader's deadline is the
                // TTL stretched by the drift bound; a client is told at
                // most the TTL.)
                ttl: seconds(info.remaining_ms.unwrap_or(info.ttl_ms).min(info.ttl_ms)),
                granted_ttl: seconds(info.ttl_ms),
                keys: if request.keys {
                    info.keys.into_iter().map(String::into_bytes).collect()
                } else {
                    Vec::new()
                },
            })),
            // etcd answers a lease that is gone with TTL -1.
            Err(status) if status.code() == Code::NotFound => {
                Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    header: Some(self.0.header(revision)),
                    id: request.id,
                    ttl: -1,
                    granted_ttl: 0,
                    keys: Vec::new(),
                }))
            }
            Err(status) => Err(status),
        }
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let (revision, leases) = self
            .0
            .inspect(Consistency::Linearizable, |view| {
                let leases = view
                    .kv
                    .leases()
                    .keys()
                    .map(|id| pb::LeaseStatus {
                        id: revision_i64(*id),
                    })
                    .collect::<Vec<_>>();
                Ok((view.kv.applied_upto().0, leases))
            })
            .await?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.0.header(revision)),
            leases,
        }))
    }
}
