//! Wire-compatibility checks against etcd's v3 API.
//!
//! The expected bytes below are worked out by hand from the field numbers
//! and types in etcd's own `rpc.proto` / `kv.proto` (a protobuf tag byte is
//! `field_number << 3 | wire_type`, wire type 0 = varint, 2 = length
//! delimited), so a renumbered or retyped field in our `.proto` files fails
//! here. The last tests run generated servers against generated clients
//! over loopback TCP.

use std::pin::Pin;

use paxlog_etcd_proto::etcdserverpb::{
    compare, kv_client::KvClient, kv_server, range_request, request_op, response_op,
    watch_client::WatchClient, watch_create_request, watch_request, watch_server,
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, Member, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, StatusResponse, TxnRequest, TxnResponse, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use paxlog_etcd_proto::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn put_request_bytes() -> TestResult {
    let req = PutRequest {
        key: b"foo".to_vec(),
        value: b"bar".to_vec(),
        lease: 5,
        prev_kv: true,
        ..Default::default()
    };
    let expected: &[u8] = &[
        0x0a, 3, b'f', b'o', b'o', // 1: key (bytes)
        0x12, 3, b'b', b'a', b'r', // 2: value (bytes)
        0x18, 5, // 3: lease (int64)
        0x20, 1, // 4: prev_kv (bool)
    ];
    assert_eq!(req.encode_to_vec(), expected);
    assert_eq!(PutRequest::decode(expected)?, req);

    let flags = PutRequest {
        ignore_value: true,
        ignore_lease: true,
        ..Default::default()
    };
    // 5: ignore_value, 6: ignore_lease (bool)
    assert_eq!(flags.encode_to_vec(), [0x28, 1, 0x30, 1]);
    Ok(())
}

#[test]
fn range_request_bytes() -> TestResult {
    let req = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        limit: 10,
        revision: 300,
        sort_order: range_request::SortOrder::Descend.into(),
        sort_target: range_request::SortTarget::Mod.into(),
        serializable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 7,
        max_create_revision: 1,
        ..Default::default()
    };
    let expected: &[u8] = &[
        0x0a, 1, b'a', // 1: key
        0x12, 1, b'b', // 2: range_end
        0x18, 10, // 3: limit
        0x20, 0xac, 0x02, // 4: revision = 300 as a two-byte varint
        0x28, 2, // 5: sort_order = DESCEND
        0x30, 3, // 6: sort_target = MOD
        0x38, 1, // 7: serializable
        0x40, 1, // 8: keys_only
        0x48, 1, // 9: count_only
        0x50, 7, // 10: min_mod_revision
        0x68, 1, // 13: max_create_revision
    ];
    assert_eq!(req.encode_to_vec(), expected);
    assert_eq!(RangeRequest::decode(expected)?, req);
    Ok(())
}

#[test]
fn watch_request_bytes() -> TestResult {
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                start_revision: 7,
                progress_notify: true,
                filters: vec![watch_create_request::FilterType::Nodelete.into()],
                prev_kv: true,
                watch_id: 9,
                fragment: true,
            },
        )),
    };
    let expected: &[u8] = &[
        0x0a, 19, // 1: create_request, 19 bytes
        0x0a, 1, b'k', // 1: key
        0x12, 1, b'l', // 2: range_end
        0x18, 7, // 3: start_revision
        0x20, 1, // 4: progress_notify
        0x2a, 1, 1, // 5: filters, packed: [NODELETE]
        0x30, 1, // 6: prev_kv
        0x38, 9, // 7: watch_id
        0x40, 1, // 8: fragment
    ];
    assert_eq!(create.encode_to_vec(), expected);
    assert_eq!(WatchRequest::decode(expected)?, create);

    // etcd's Go encoder is free to send repeated enums unpacked; accept that.
    let unpacked: &[u8] = &[0x0a, 4, 0x28, 0, 0x28, 1];
    let Some(watch_request::RequestUnion::CreateRequest(c)) =
        WatchRequest::decode(unpacked)?.request_union
    else {
        panic!("expected a create_request");
    };
    assert_eq!(c.filters, [0, 1]);

    let cancel = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CancelRequest(
            WatchCancelRequest { watch_id: 9 },
        )),
    };
    assert_eq!(cancel.encode_to_vec(), [0x12, 2, 0x08, 9]);

    let progress = WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            WatchProgressRequest {},
        )),
    };
    assert_eq!(progress.encode_to_vec(), [0x1a, 0]);
    Ok(())
}

#[test]
fn watch_response_bytes() -> TestResult {
    let resp = WatchResponse {
        header: Some(ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 3,
            raft_term: 4,
        }),
        watch_id: 5,
        created: true,
        canceled: true,
        compact_revision: 6,
        cancel_reason: "x".into(),
        fragment: true,
        events: vec![Event {
            r#type: EventType::Delete.into(),
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                mod_revision: 3,
                ..Default::default()
            }),
            prev_kv: None,
        }],
    };
    let expected: &[u8] = &[
        0x0a, 8, 0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4, // 1: header {1,2,3,4}
        0x10, 5, // 2: watch_id
        0x18, 1, // 3: created
        0x20, 1, // 4: canceled
        0x28, 6, // 5: compact_revision
        0x32, 1, b'x', // 6: cancel_reason
        0x38, 1, // 7: fragment
        0x5a, 9, // 11: events, 9 bytes
        0x08, 1, // Event 1: type = DELETE
        0x12, 5, 0x0a, 1, b'k', 0x18, 3, // Event 2: kv {key, mod_revision}
    ];
    assert_eq!(resp.encode_to_vec(), expected);
    assert_eq!(WatchResponse::decode(expected)?, resp);
    Ok(())
}

#[test]
fn compare_bytes() -> TestResult {
    let cmp = Compare {
        result: compare::CompareResult::Less.into(),
        target: compare::CompareTarget::Mod.into(),
        key: b"k".to_vec(),
        range_end: b"z".to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(42)),
    };
    let expected: &[u8] = &[
        0x08, 2, // 1: result = LESS
        0x10, 2, // 2: target = MOD
        0x1a, 1, b'k', // 3: key
        0x30, 42, // 6: mod_revision (in target_union)
        0x82, 0x04, 1, b'z', // 64: range_end, tag 64<<3|2 = 514
    ];
    assert_eq!(cmp.encode_to_vec(), expected);
    assert_eq!(Compare::decode(expected)?, cmp);

    // A oneof member is sent even when it holds the default value: etcd's
    // "key does not exist" guard is `version == 0`.
    let absent = Compare {
        key: b"k".to_vec(),
        target_union: Some(compare::TargetUnion::Version(0)),
        ..Default::default()
    };
    assert_eq!(absent.encode_to_vec(), [0x1a, 1, b'k', 0x20, 0]);
    assert_eq!(
        Compare::decode(&[0x20u8, 0][..])?.target_union,
        absent.target_union
    );

    let by_value = Compare {
        target: compare::CompareTarget::Value.into(),
        target_union: Some(compare::TargetUnion::Value(b"v".to_vec())),
        ..Default::default()
    };
    // 2: target = VALUE, 7: value
    assert_eq!(by_value.encode_to_vec(), [0x10, 3, 0x3a, 1, b'v']);
    let by_lease = Compare {
        target: compare::CompareTarget::Lease.into(),
        target_union: Some(compare::TargetUnion::Lease(1)),
        ..Default::default()
    };
    // 2: target = LEASE, 8: lease
    assert_eq!(by_lease.encode_to_vec(), [0x10, 4, 0x40, 1]);
    Ok(())
}

#[test]
fn txn_request_bytes() -> TestResult {
    let put = |k: &[u8]| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.to_vec(),
            ..Default::default()
        })),
    };
    let nested = RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest::default())),
    };
    let txn = TxnRequest {
        compare: vec![],
        success: vec![put(b"a")],
        failure: vec![nested],
    };
    let expected: &[u8] = &[
        0x12, 5, 0x12, 3, 0x0a, 1, b'a', // 2: success [RequestOp 2: request_put {key}]
        0x1a, 2, 0x22, 0, // 3: failure [RequestOp 4: request_txn {}]
    ];
    assert_eq!(txn.encode_to_vec(), expected);
    assert_eq!(TxnRequest::decode(expected)?, txn);
    Ok(())
}

#[test]
fn other_field_numbers() -> TestResult {
    // LeaseGrantRequest: 1 TTL, 2 ID.
    let grant = LeaseGrantRequest { ttl: 60, id: 7 };
    assert_eq!(grant.encode_to_vec(), [0x08, 60, 0x10, 7]);

    // Member: 1 ID, 2 name, 3 peerURLs, 4 clientURLs, 5 isLearner.
    let member: &[u8] = &[
        0x08, 1, 0x12, 1, b'n', 0x1a, 1, b'p', 0x22, 1, b'c', 0x28, 1,
    ];
    let m = Member::decode(member)?;
    assert_eq!(m.id, 1);
    assert_eq!(m.name, "n");
    assert_eq!(m.peer_ur_ls, ["p"]);
    assert_eq!(m.client_ur_ls, ["c"]);
    assert!(m.is_learner);

    // StatusResponse: 7 raftAppliedIndex, 8 errors, 9 dbSizeInUse, 10 isLearner.
    let status: &[u8] = &[0x38, 3, 0x42, 1, b'e', 0x48, 4, 0x50, 1];
    let s = StatusResponse::decode(status)?;
    assert_eq!(s.raft_applied_index, 3);
    assert_eq!(s.errors, ["e"]);
    assert_eq!(s.db_size_in_use, 4);
    assert!(s.is_learner);
    Ok(())
}

/// A KV service that knows one key and answers everything else with
/// `UNIMPLEMENTED`.
struct OneKey;

#[tonic::async_trait]
impl kv_server::Kv for OneKey {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        let kvs = if req.key == b"hello" {
            vec![KeyValue {
                key: req.key,
                value: b"world".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                version: 1,
                lease: 0,
            }]
        } else {
            vec![]
        };
        Ok(Response::new(RangeResponse {
            header: Some(ResponseHeader {
                revision: 3,
                ..Default::default()
            }),
            count: i64::try_from(kvs.len()).map_err(|e| Status::internal(e.to_string()))?,
            kvs,
            more: false,
        }))
    }

    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Err(Status::unimplemented("read only"))
    }

    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("read only"))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        // Answer each range in `success` through `range`, to exercise the
        // nested oneofs in both directions.
        let mut responses = Vec::new();
        for op in req.into_inner().success {
            match op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    let resp = self.range(Request::new(r)).await?.into_inner();
                    responses.push(ResponseOp {
                        response: Some(response_op::Response::ResponseRange(resp)),
                    });
                }
                _ => return Err(Status::unimplemented("only ranges in txn")),
            }
        }
        Ok(Response::new(TxnResponse {
            header: None,
            succeeded: true,
            responses,
        }))
    }

    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Err(Status::unimplemented("read only"))
    }
}

/// A Watch service that acknowledges each create request.
struct AckWatch;

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl watch_server::Watch for AckWatch {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<tonic::Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let out = req.into_inner().map(|r| {
            let r = r?;
            match r.request_union {
                Some(watch_request::RequestUnion::CreateRequest(c)) => Ok(WatchResponse {
                    watch_id: c.watch_id,
                    created: true,
                    ..Default::default()
                }),
                _ => Err(Status::unimplemented("only create")),
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[tokio::test]
async fn generated_server_answers_generated_client() -> TestResult {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(kv_server::KvServer::new(OneKey))
            .add_service(watch_server::WatchServer::new(AckWatch))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );

    let endpoint = format!("http://{addr}");
    let mut kv = KvClient::connect(endpoint.clone()).await?;

    let resp = kv
        .range(RangeRequest {
            key: b"hello".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(resp.count, 1);
    assert_eq!(resp.kvs[0].value, b"world");
    assert_eq!(resp.header.map(|h| h.revision), Some(3));

    let status = kv
        .put(PutRequest::default())
        .await
        .err()
        .ok_or("put should fail")?;
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    let txn = kv
        .txn(TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b"hello".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(txn.succeeded);
    match txn.responses.as_slice() {
        [ResponseOp {
            response: Some(response_op::Response::ResponseRange(r)),
        }] => assert_eq!(r.kvs[0].key, b"hello"),
        other => panic!("unexpected txn responses {other:?}"),
    }

    // Bidirectional stream.
    let mut watch = WatchClient::connect(endpoint).await?;
    let requests = tokio_stream::iter([7, 8].map(|id| WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"hello".to_vec(),
                watch_id: id,
                ..Default::default()
            },
        )),
    }));
    let mut responses = watch.watch(requests).await?.into_inner();
    for id in [7, 8] {
        let r = responses
            .message()
            .await?
            .ok_or("watch stream ended early")?;
        assert!(r.created);
        assert_eq!(r.watch_id, id);
    }

    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}
