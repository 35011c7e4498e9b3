//! The Documents service: get and list documents, and accept device
//! reports (the gRPC twin of an MQTT device message).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use utopia_proto::v1 as pb;
use utopia_raft::event::{DeviceData, Event, Outcome};
use utopia_storage::keys::{Collection, DeviceIndex};

use super::access::Need;
use super::header;
use crate::node::{Error, Node};
use utopia_raft::event::Access;

pub struct DocumentsService {
    node: Arc<Node>,
}

impl DocumentsService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn collection(&self, name: &str) -> Result<Collection, Error> {
        Collection::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Collection::ALL.iter().map(|c| c.name()).collect();
            self.node.invalid(
                "unknown_collection",
                format!(
                    "unknown collection {name:?}; expected one of: {}",
                    known.join(", ")
                ),
            )
        })
    }
}

/// A topic level: non-empty, no `/`, no MQTT wildcards, bounded.
fn check_level(node: &Node, what: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.contains(['/', '+', '#', '\0']) || value.len() > 256 {
        return Err(node.invalid(
            "bad_device_report",
            format!("{what} {value:?} must be 1..=256 bytes without '/', '+', '#' or NUL"),
        ));
    }
    Ok(())
}

/// Longest host name of a database server (DNS's limit).
const DB_HOST_BYTES_MAX: usize = 253;
/// Longest database server type.
const DB_TYPE_BYTES_MAX: usize = 32;

/// Checks a database server's host, port and type (`utopia db add`): the
/// document id `HOST:PORT:TYPE` must read back unambiguously.
pub(crate) fn check_db_server(host: &str, port: u32, kind: &str) -> Result<(), String> {
    let bracketed = host.len() > 2 && host.starts_with('[') && host.ends_with(']');
    let inner = if bracketed {
        &host[1..host.len() - 1]
    } else {
        host
    };
    if host.is_empty() || host.len() > DB_HOST_BYTES_MAX {
        return Err(format!(
            "host must be 1..={DB_HOST_BYTES_MAX} bytes, found {}",
            host.len()
        ));
    }
    let host_ok = if bracketed {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if !host_ok {
        return Err(format!(
            "host {host:?} must be a host name or IPv4 address (letters, digits, '.', '-', '_'), \
             or an IPv6 address in brackets"
        ));
    }
    if !(1..=65535).contains(&port) {
        return Err(format!("port must be 1..=65535, found {port}"));
    }
    if kind.is_empty()
        || kind.len() > DB_TYPE_BYTES_MAX
        || !kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
    {
        return Err(format!(
            "type {kind:?} must be 1..={DB_TYPE_BYTES_MAX} lowercase letters, digits, '_' or '-'"
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::documents_server::Documents for DocumentsService {
    async fn db_server(
        &self,
        req: Request<pb::DbServerRequest>,
    ) -> Result<Response<pb::DbServerResponse>, Status> {
        self.node
            .authorize(&req, Need::Collection(Access::Write, "db_servers"))?;
        let r = req.into_inner();
        check_db_server(&r.host, r.port, &r.r#type)
            .map_err(|e| self.node.invalid("bad_db_server", e))?;
        let (host, port, kind) = (r.host, r.port as u16, r.r#type);
        let id = format!("{host}:{port}:{kind}");
        let remove = r.action == pb::db_server_request::Action::Remove as i32;
        let event = if remove {
            Event::DbServerRemoved { host, port, kind }
        } else {
            Event::DbServerRegistered { host, port, kind }
        };
        let resp = self.node.propose(event).await?;
        let document = if remove {
            None
        } else {
            self.node
                .reader
                .get_document(
                    Collection::DbServers,
                    &id,
                    self.node.limits.response_bytes_max as usize,
                )
                .map_err(Error::from)?
                .map(|json| pb::Document {
                    collection: Collection::DbServers.name().to_string(),
                    id,
                    json,
                })
        };
        Ok(Response::new(pb::DbServerResponse {
            header: header(&self.node, resp.revision),
            document,
        }))
    }

    async fn get(
        &self,
        req: Request<pb::GetDocumentRequest>,
    ) -> Result<Response<pb::GetDocumentResponse>, Status> {
        self.node.authorize(
            &req,
            Need::Collection(Access::Read, &req.get_ref().collection),
        )?;
        let r = req.into_inner();
        let collection = self.collection(&r.collection)?;
        self.node
            .read_barrier(super::consistency(r.consistency))
            .await?;
        let Some(json) = self
            .node
            .reader
            .get_document(
                collection,
                &r.id,
                self.node.limits.response_bytes_max as usize,
            )
            .map_err(Error::from)?
        else {
            return Err(
                Error::NotFound(format!("document {}/{} not found", r.collection, r.id)).into(),
            );
        };
        Ok(Response::new(pb::GetDocumentResponse {
            header: header(&self.node, self.node.current_revision()?),
            document: Some(pb::Document {
                collection: r.collection,
                id: r.id,
                json,
            }),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListDocumentsRequest>,
    ) -> Result<Response<pb::ListDocumentsResponse>, Status> {
        self.node.authorize(
            &req,
            Need::Collection(Access::Read, &req.get_ref().collection),
        )?;
        let r = req.into_inner();
        let collection = self.collection(&r.collection)?;
        let filters: Vec<(DeviceIndex, &str)> = [
            (DeviceIndex::Zone, r.zone.as_str()),
            (DeviceIndex::Class, r.class.as_str()),
            (DeviceIndex::Host, r.host.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        if filters.len() > 1 {
            return Err(self
                .node
                .invalid(
                    "bad_filter",
                    "at most one of zone, class and host may be set",
                )
                .into());
        }
        let filter = filters.first().copied();
        if filter.is_some() && collection != Collection::Devices {
            return Err(self
                .node
                .invalid(
                    "bad_filter",
                    "zone, class and host filters apply to the devices collection only",
                )
                .into());
        }
        self.node
            .read_barrier(super::consistency(r.consistency))
            .await?;
        let limit = self.node.range_limit(r.limit);
        let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let page = self
            .node
            .reader
            .list_documents(
                collection,
                filter,
                limit,
                self.node.limits.response_bytes_max as usize,
                token,
            )
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListDocumentsResponse {
            header: header(&self.node, self.node.current_revision()?),
            documents: page
                .documents
                .into_iter()
                .map(|(id, json)| pb::Document {
                    collection: r.collection.clone(),
                    id,
                    json,
                })
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn report(
        &self,
        req: Request<pb::DeviceReport>,
    ) -> Result<Response<pb::DeviceReportResponse>, Status> {
        self.node
            .authorize(&req, Need::Collection(Access::Write, "devices"))?;
        let r = req.into_inner();
        check_level(&self.node, "host", &r.host)?;
        check_level(&self.node, "zone", &r.zone)?;
        check_level(&self.node, "class", &r.class)?;
        check_level(&self.node, "device_id", &r.device_id)?;
        check_level(&self.node, "post_type", &r.post_type)?;
        self.node.check_path(r.path.len())?;
        for p in &r.path {
            check_level(&self.node, "path segment", p)?;
        }
        self.node.check_value(r.json.as_bytes())?;
        self.node.check_json_depth(&r.json, "value")?;
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&r.json) {
            return Err(self
                .node
                .invalid("bad_json", format!("value is not valid JSON: {e}"))
                .into());
        }
        let event = Event::DeviceDataUpdated(DeviceData {
            host: r.host,
            zone: r.zone,
            class: r.class,
            device_id: r.device_id,
            post_type: r.post_type,
            path: r.path,
            json: r.json,
        });
        let resp = self.node.propose(event).await?;
        let device = match resp.outcome {
            Outcome::Device { id } => id,
            _ => String::new(),
        };
        Ok(Response::new(pb::DeviceReportResponse {
            header: header(&self.node, resp.revision),
            device,
        }))
    }

    async fn command(
        &self,
        req: Request<pb::DeviceCommandRequest>,
    ) -> Result<Response<pb::DeviceCommandResponse>, Status> {
        self.node
            .authorize(&req, Need::Collection(Access::Write, "devices"))?;
        let r = req.into_inner();
        if r.device.is_empty() || r.device.len() > 1024 {
            return Err(self
                .node
                .invalid(
                    "bad_command",
                    "device must be a device document id, HOST/CLASS/ID",
                )
                .into());
        }
        check_level(&self.node, "post_type", &r.post_type)?;
        self.node.check_value(r.json.as_bytes())?;
        self.node.check_json_depth(&r.json, "payload")?;
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&r.json) {
            return Err(self
                .node
                .invalid("bad_json", format!("payload is not valid JSON: {e}"))
                .into());
        }
        let resp = self
            .node
            .propose(Event::CommandIssued {
                device: r.device,
                post_type: r.post_type,
                json: r.json,
                attempts_max: self.node.command_attempts_max,
            })
            .await?;
        let Outcome::Command { id } = resp.outcome else {
            return Err(Error::Internal(format!("unexpected outcome {:?}", resp.outcome)).into());
        };
        Ok(Response::new(pb::DeviceCommandResponse {
            header: header(&self.node, resp.revision),
            command_id: id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::check_db_server;

    #[test]
    fn db_server_addresses_are_checked() {
        let check = |host: &str, port: u32, kind: &str, ok: bool| {
            assert_eq!(
                check_db_server(host, port, kind).is_ok(),
                ok,
                "{host}:{port}:{kind}"
            );
        };
        check("db1.example.com", 27017, "mongodb", true);
        check("10.0.0.3", 1, "mongodb", true);
        check("[::1]", 65535, "rocks_db-2", true);
        check("", 27017, "mongodb", false);
        check("::1", 27017, "mongodb", false);
        check("[nope]", 27017, "mongodb", false);
        check("a b", 27017, "mongodb", false);
        check("db:1", 27017, "mongodb", false);
        check(&"a".repeat(254), 27017, "mongodb", false);
        check("db", 0, "mongodb", false);
        check("db", 65536, "mongodb", false);
        check("db", 27017, "", false);
        check("db", 27017, "MongoDB", false);
        check("db", 27017, "mongo:db", false);
        check("db", 27017, &"m".repeat(33), false);
    }
}
