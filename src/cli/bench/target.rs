//! The systems `utopia bench` can drive, and the one-call clients it uses on
//! them: utopia's `KV` service, or etcd's v3 `etcdserverpb.KV` (a client
//! generated from the subset of etcd's protos in `utopia-proto`).
//!
//! Both are measured the same way: every connection goes to the leader
//! (found through each system's status call; the first endpoint that
//! answers when no leader is named), so a put costs no follower-to-leader hop
//! and a linearizable read is answered where the read index is.

use clap::ValueEnum;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::Status;
use utopia_proto::etcd;
use utopia_proto::v1 as pb;

use super::super::client::{self, Client};
use super::super::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// utopiad's KV service.
    Utopia,
    /// etcd's v3 gRPC API (etcdserverpb.KV).
    Etcd,
}

/// One connection's client for the target.
#[derive(Clone)]
pub enum Conn {
    Utopia(pb::kv_client::KvClient<client::AuthedService>),
    Etcd(etcd::kv_client::KvClient<Channel>),
}

impl Conn {
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>, lease: i64) -> Result<(), Status> {
        match self {
            Conn::Utopia(c) => c
                .put(pb::PutRequest {
                    key,
                    value,
                    lease,
                    prev_kv: false,
                })
                .await
                .map(drop),
            Conn::Etcd(c) => c
                .put(etcd::PutRequest {
                    key,
                    value,
                    lease,
                    prev_kv: false,
                })
                .await
                .map(drop),
        }
    }

    /// Reads one key.
    pub async fn get(&mut self, key: Vec<u8>, serializable: bool) -> Result<(), Status> {
        match self {
            Conn::Utopia(c) => {
                let consistency = if serializable {
                    pb::Consistency::Serializable
                } else {
                    pb::Consistency::Linearizable
                };
                c.range(pb::RangeRequest {
                    key,
                    consistency: consistency as i32,
                    ..Default::default()
                })
                .await
                .map(drop)
            }
            Conn::Etcd(c) => c
                .range(etcd::RangeRequest {
                    key,
                    serializable,
                    ..Default::default()
                })
                .await
                .map(drop),
        }
    }
}

/// Opens `n` connections to the leader of the target's cluster. Returns the
/// endpoint they go to and one client per connection.
pub async fn connect(
    target: Target,
    client: &mut Client,
    n: usize,
) -> Result<(String, Vec<Conn>), CliError> {
    let uri = match target {
        Target::Utopia => utopia_leader(client).await,
        Target::Etcd => etcd_leader(client).await,
    };
    let (endpoint, channels) = match uri {
        Some(uri) => client.connect_many_to(&uri, n).await?,
        None => client.connect_many(n).await?,
    };
    let conns = channels
        .into_iter()
        .map(|ch| match target {
            Target::Utopia => Conn::Utopia(client::kv(client.with_token(ch))),
            Target::Etcd => Conn::Etcd(
                etcd::kv_client::KvClient::new(ch)
                    .max_decoding_message_size(client::MAX_DECODING_MESSAGE_SIZE),
            ),
        })
        .collect();
    Ok((endpoint, conns))
}

/// The leader's client address as the first node that answers names it;
/// when it does not know it yet (the leader has not published it, or this
/// node has not applied that), the endpoint that says it leads.
async fn utopia_leader(client: &mut Client) -> Option<String> {
    let st = client
        .call(|ch| async move { client::maintenance(ch).status(pb::StatusRequest {}).await })
        .await
        .ok()?;
    let named = st
        .members
        .iter()
        .find(|m| m.id == st.leader && st.leader != 0 && !m.client_addr.is_empty())
        .map(|m| client::endpoint_uri(&m.client_addr, client.tls().is_some()));
    if named.is_some() {
        return named;
    }
    let client: &Client = client;
    endpoint_that_leads(client, |ch| {
        let ch = client.with_token(ch);
        async move {
            let st = client::maintenance(ch)
                .status(pb::StatusRequest {})
                .await
                .ok()?
                .into_inner();
            Some((st.leader, st.header.map(|h| h.member_id).unwrap_or(0)))
        }
    })
    .await
}

/// The endpoint whose member id is the leader its peers name. etcd's
/// status reports member ids, not client addresses, so every endpoint is
/// asked until one says it is the leader.
async fn etcd_leader(client: &mut Client) -> Option<String> {
    endpoint_that_leads(client, |ch| async move {
        let st = etcd::maintenance_client::MaintenanceClient::new(ch)
            .status(etcd::StatusRequest {})
            .await
            .ok()?
            .into_inner();
        Some((st.leader, st.header.map(|h| h.member_id).unwrap_or(0)))
    })
    .await
}

/// The first endpoint whose status, `(leader, its own member id)`, says it
/// is the leader.
async fn endpoint_that_leads<F, Fut>(client: &Client, status: F) -> Option<String>
where
    F: Fn(Channel) -> Fut,
    Fut: std::future::Future<Output = Option<(u64, u64)>>,
{
    for uri in client.endpoint_uris() {
        let Ok(ch) = client.open(&uri).await else {
            continue;
        };
        let Ok(Some((leader, me))) = tokio::time::timeout(client.timeout(), status(ch)).await
        else {
            continue;
        };
        if leader != 0 && leader == me {
            return Some(uri);
        }
    }
    None
}
