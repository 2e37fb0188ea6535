//! etcd's Cluster, Maintenance and Auth services: the membership as etcd
//! members, what `etcdctl endpoint status` and `endpoint health` ask, and
//! `Authenticate` for the tokens paxlog already has.

use super::*;
use crate::auth::Tokens;
use crate::driver::{MemberAction, MembersReport, MembershipRequest, NodeStatus};
use std::sync::Arc;
use tonic::{Request, Response};

pub struct ClusterApi(pub EtcdApi);
pub struct MaintenanceApi(pub EtcdApi);
pub struct AuthApi {
    pub tokens: Arc<Tokens>,
}

impl EtcdApi {
    pub(super) async fn status(&self) -> Result<Box<NodeStatus>, Status> {
        self.query(Consistency::Local, |reply| Query::Status { reply })
            .await
    }

    /// The members as etcd lists them.
    fn members(&self, report: &MembersReport) -> Vec<pb::Member> {
        let url = |addr: &str| {
            let scheme = if self.state.node().tls {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{addr}")
        };
        let member = |id: u32, is_learner: bool| pb::Member {
            id: member_id(id),
            name: format!("paxlog-{id}"),
            peer_ur_ls: report
                .addresses
                .get(&id)
                .map(|a| vec![url(&a.peer_addr)])
                .unwrap_or_default(),
            client_ur_ls: report
                .grpc_addresses
                .get(&id)
                .map(|a| vec![url(a)])
                .unwrap_or_default(),
            is_learner,
        };
        report
            .voters
            .iter()
            .map(|id| member(*id, false))
            .chain(report.learners.iter().map(|id| member(*id, true)))
            .collect()
    }

    async fn change_member(&self, action: MemberAction, id: u32) -> Result<MembersReport, Status> {
        let (reply, answer) = oneshot::channel();
        let input = DriverInput::ChangeMembership(MembershipRequest {
            action,
            id,
            reply,
            deadline: self.state.deadline(),
        });
        self.state.call(input, answer).await.map_err(status_of)
    }

    /// Changes etcd member `member`'s role: the header at the change's
    /// revision and the members after it.
    async fn change_and_list(
        &self,
        action: MemberAction,
        member: u64,
    ) -> Result<(Option<pb::ResponseHeader>, Vec<pb::Member>), Status> {
        let report = self.change_member(action, replica_of(member)?).await?;
        let revision = report.round.map_or(0, revision_of_round);
        Ok((Some(self.header(revision)), self.members(&report)))
    }

    async fn member_list_response(&self) -> Result<(u64, Vec<pb::Member>), Status> {
        let status = self.status().await?;
        Ok((status.current_round, self.members(&status.membership)))
    }
}

/// `http://host:port` as `host:port`.
fn address_of_url(url: &str) -> Result<String, Status> {
    let addr = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    paxlog_kv::check_member_addr(addr)
        .map(|()| addr.to_string())
        .map_err(|why| Status::invalid_argument(format!("etcdserver: bad peer URL {url:?}: {why}")))
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterApi {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let request = request.into_inner();
        let [peer_url] = request.peer_ur_ls.as_slice() else {
            return Err(Status::invalid_argument(
                "paxlog: give exactly one peer URL for the new member",
            ));
        };
        let peer_addr = address_of_url(peer_url)?;
        let output = self
            .0
            .write(KvCommand::RegisterMember {
                peer_addr,
                http_addr: None,
                min_id: self.0.state.node().min_new_id,
            })
            .await?;
        let ApplyResult::Ok {
            value: Some(report),
        } = &output.result
        else {
            return Err(Status::internal("the address book answered without an id"));
        };
        let id = report
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| Status::internal("the address book answered without an id"))?;
        // A new member always starts as a learner: it votes once promoted
        // (after it caught up), whatever `isLearner` asked.
        let report = self.0.change_member(MemberAction::Add, id).await?;
        let members = self.0.members(&report);
        let member = members.iter().find(|m| m.id == member_id(id)).cloned();
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.0.header(revision_of_round(output.slot.0))),
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let (header, members) = self
            .0
            .change_and_list(MemberAction::Remove, request.into_inner().id)
            .await?;
        Ok(Response::new(pb::MemberRemoveResponse { header, members }))
    }

    async fn member_update(
        &self,
        _request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(
            "paxlog: a member's peer address changes when the replica joins again at the new address (paxlog member replace)",
        ))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let (revision, members) = self.0.member_list_response().await?;
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.0.header(revision)),
            members,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let (header, members) = self
            .0
            .change_and_list(MemberAction::Promote, request.into_inner().id)
            .await?;
        Ok(Response::new(pb::MemberPromoteResponse { header, members }))
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceApi {
    async fn alarm(
        &self,
        _request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        // paxlog raises no alarms (a full disk fails writes instead).
        let revision = self.0.state.metrics().published.snapshot().applied_round;
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.0.header(revision)),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.0.status().await?;
        let mut errors = Vec::new();
        if let Some(recovering) = &status.recovering {
            errors.push(format!("recovering forgotten state: {recovering:?}"));
        }
        // The newest snapshot's size: the database's size on disk.
        let db_size = self.0.state.metrics().snapshot_bytes.get();
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.0.header(status.current_round)),
            version: format!("3.5.0-paxlog-{}", env!("CARGO_PKG_VERSION")),
            db_size,
            leader: status.leader.map_or(0, member_id),
            raft_index: status.chosen_round,
            raft_term: self.0.state.metrics().published.snapshot().term,
            raft_applied_index: status.current_round,
            errors,
            db_size_in_use: db_size,
            is_learner: status.membership.learners.contains(&status.id),
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // Snapshots and log compaction keep the files compact already.
        let revision = self.0.state.metrics().published.snapshot().applied_round;
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.0.header(revision)),
        }))
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        Err(Status::unimplemented("paxlog: Hash is not served"))
    }

    async fn hash_kv(
        &self,
        _request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        Err(Status::unimplemented("paxlog: HashKV is not served"))
    }

    async fn move_leader(
        &self,
        _request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(Status::unimplemented(
            "paxlog: leadership moves by election only",
        ))
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthApi {
    /// paxlog's tokens stand in for etcd's users: any user name, with a
    /// token as the password, gets that token back (clients then send it
    /// with every request).
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let request = request.into_inner();
        if !self.tokens.enabled() {
            return Err(Status::failed_precondition(
                "etcdserver: authentication is not enabled",
            ));
        }
        crate::auth::check(&self.tokens, Some(&request.password), true).map_err(|_| {
            Status::invalid_argument(
                "etcdserver: authentication failed, invalid user ID or password",
            )
        })?;
        Ok(Response::new(pb::AuthenticateResponse {
            header: None,
            token: request.password,
        }))
    }
}
