//! The Configs service: XML configuration files (device classes and
//! schemas) as the operator sees them.
//!
//! - `Upload`: the file is validated here ([`xmlconf::validate()`], bounded by
//!   `configs.file_bytes_max`) and becomes this member's vote
//!   ([`Event::ConfigVote`], source `upload`, its `configs.weight` and
//!   `configs.agreement_window_ms`). The answer is the version's state once
//!   the vote is applied; the leader decides the version when the agreement
//!   window is over, which `Get` then shows.
//! - `List`: every `xml_configs` document (versions and rejected files)
//!   without its XML, paged like `Documents.List` within
//!   `limits.response_bytes_max`.
//! - `Get`: one version (the highest accepted one by default) with its
//!   file's exact bytes and its document.
//!
//! Uploads need write permission on the `xml_configs` collection, reads
//! need read permission on it (the root role has both).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use utopia_proto::v1 as pb;
use utopia_raft::event::{Access, Event, Rejection, VoteSource};
use utopia_storage::apply::xmlconf::{valid_name, NAME_BYTES_MAX};
use utopia_storage::documents::{ConfigState, Document, XmlConfig};
use utopia_storage::keys::Collection;

use super::access::Need;
use super::header;
use crate::node::{Error, Node};
use crate::xmlconf::{self, Issue, Voter};

/// The collection whose permissions guard this service.
pub const COLLECTION: &str = "xml_configs";

pub struct ConfigsService {
    node: Arc<Node>,
}

impl ConfigsService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// The file's checks before it becomes a vote: its size, then the
    /// validator's (UTF-8, no DOCTYPE, XSD, model).
    fn validate(&self, xml: &[u8]) -> Result<xmlconf::Validated, Error> {
        let max = self.node.configs.file_bytes_max;
        if xml.len() as u64 > max {
            return Err(self.node.invalid(
                "config_too_large",
                format!(
                    "the file is {} bytes; the limit is configs.file_bytes_max = {max}",
                    xml.len()
                ),
            ));
        }
        xmlconf::validate(xml, max as usize).map_err(|issue| {
            self.node.invalid(
                "invalid_config",
                format!(
                    "the file is not a valid configuration: {}",
                    where_why(&issue)
                ),
            )
        })
    }
}

/// `line L, column C: reason` (as much of the position as is known).
pub fn where_why(issue: &Issue) -> String {
    match (issue.line, issue.column) {
        (Some(l), Some(c)) => format!("line {l}, column {c}: {}", issue.reason),
        (Some(l), None) => format!("line {l}: {}", issue.reason),
        _ => issue.reason.clone(),
    }
}

/// A vote the log refused is the state's doing, not the request's form:
/// FAILED_PRECONDITION with the applier's reason (a new version is needed,
/// the version is not above the accepted one). Refusals that mean
/// something else (no space, a quota) keep their own codes.
fn refused(id: &str, e: Error) -> Error {
    match e {
        Error::Rejected(Rejection::Invalid(reason) | Rejection::FailedPrecondition(reason)) => {
            Error::FailedPrecondition(format!("the vote for {id} was refused: {reason}"))
        }
        Error::Rejected(r @ (Rejection::AlreadyExists(_) | Rejection::NotFound(_))) => {
            Error::FailedPrecondition(format!("the vote for {id} was refused: {r}"))
        }
        other => other,
    }
}

pub fn state_name(state: ConfigState) -> &'static str {
    match state {
        ConfigState::Proposed => "proposed",
        ConfigState::Accepted => "accepted",
        ConfigState::Superseded => "superseded",
        ConfigState::Rejected => "rejected",
    }
}

/// The file of a version: the decided content, or while undecided the
/// leading one (the document's `hash`), kept among the candidates.
fn file_bytes(doc: &XmlConfig) -> &str {
    if doc.state != ConfigState::Proposed {
        return &doc.xml;
    }
    doc.candidates
        .iter()
        .find(|c| c.hash == doc.hash)
        .map_or(doc.xml.as_str(), |c| c.xml.as_str())
}

/// A document as the API lists it: everything but the XML (and the
/// competing contents while undecided, which carry XML too).
pub fn info(doc: &XmlConfig) -> pb::ConfigInfo {
    pb::ConfigInfo {
        id: doc.id.clone(),
        name: doc.name.clone(),
        r#type: doc.kind.clone(),
        version: doc.version,
        hash: doc.hash.clone(),
        state: state_name(doc.state).to_string(),
        proposer: doc.proposer,
        votes: doc
            .votes
            .iter()
            .map(|v| pb::ConfigVoteInfo {
                node: v.node,
                weight_milli: v.weight_milli,
                hash: v.hash.clone(),
                at_ms: v.at_ms,
                source: v.source.as_str().to_string(),
            })
            .collect(),
        failing: doc
            .failing
            .iter()
            .map(|f| pb::ConfigFailingInfo {
                node: f.node,
                reason: f.reason.clone(),
                since_ms: f.since_ms,
            })
            .collect(),
        proposed_ms: doc.proposed_ms,
        decided_ms: doc.decided_ms.unwrap_or(0),
        decide_after_ms: doc.decide_after_ms.unwrap_or(0),
        file: doc.file.clone().unwrap_or_default(),
        reason: doc.reason.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl pb::configs_server::Configs for ConfigsService {
    async fn upload(
        &self,
        req: Request<pb::ConfigUploadRequest>,
    ) -> Result<Response<pb::ConfigUploadResponse>, Status> {
        self.node
            .authorize(&req, Need::Collection(Access::Write, COLLECTION))?;
        let xml = req.into_inner().xml;
        let validated = self.validate(&xml)?;
        let vote = xmlconf::vote(
            &xml,
            &validated,
            Voter {
                node: self.node.raft.id(),
                weight_milli: self.node.configs.weight_milli,
                window_ms: self.node.configs.agreement_window_ms,
                source: VoteSource::Upload,
            },
        );
        let id = format!("{}@{}", vote.name, vote.version);
        let (name, kind, version, hash) = (
            vote.name.clone(),
            vote.kind.clone(),
            vote.version,
            vote.hash.clone(),
        );
        let resp = self
            .node
            .propose(Event::ConfigVote(vote))
            .await
            .map_err(|e| refused(&id, e))?;
        // A client's write is proposed by the member it reached, which is
        // the leader, and `propose` returns once it is applied here: the
        // document shows the vote.
        let doc = self
            .node
            .reader
            .document::<XmlConfig>(&id)
            .map_err(Error::from)?
            .ok_or_else(|| {
                Error::Internal(format!("the vote for {id} was applied but {id} is missing"))
            })?;
        Ok(Response::new(pb::ConfigUploadResponse {
            header: header(&self.node, resp.revision),
            name,
            r#type: kind,
            version,
            hash,
            state: state_name(doc.state).to_string(),
            decide_after_ms: doc.decide_after_ms.unwrap_or(0),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListConfigsRequest>,
    ) -> Result<Response<pb::ListConfigsResponse>, Status> {
        self.node
            .authorize(&req, Need::Collection(Access::Read, COLLECTION))?;
        let r = req.into_inner();
        self.node
            .read_barrier(super::consistency(r.consistency))
            .await?;
        let limit = self.node.range_limit(r.limit);
        let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        // Paged by the documents' stored size, XML included: a page without
        // the XML is smaller still, so it stays within the bound.
        let page = self
            .node
            .reader
            .list_documents(
                Collection::XmlConfigs,
                None,
                limit,
                self.node.limits.response_bytes_max as usize,
                token,
            )
            .map_err(Error::from)?;
        let mut configs = Vec::with_capacity(page.documents.len());
        for (id, json) in &page.documents {
            let doc = XmlConfig::decode(id, json.as_bytes())
                .map_err(|e| Error::from(utopia_storage::StoreError::from(e)))?;
            configs.push(info(&doc));
        }
        Ok(Response::new(pb::ListConfigsResponse {
            header: header(&self.node, self.node.current_revision()?),
            configs,
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get(
        &self,
        req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        self.node
            .authorize(&req, Need::Collection(Access::Read, COLLECTION))?;
        let r = req.into_inner();
        if !valid_name(&r.name) {
            return Err(self
                .node
                .invalid(
                    "bad_config_name",
                    format!(
                        "configuration name {:?} must be 1 to {} of A-Z, a-z, 0-9, '_', '.', '-'",
                        r.name, NAME_BYTES_MAX
                    ),
                )
                .into());
        }
        self.node
            .read_barrier(super::consistency(r.consistency))
            .await?;
        let doc = if r.version == 0 {
            self.node
                .reader
                .accepted_config(&r.name)
                .map_err(Error::from)?
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "configuration {} has no accepted version (`utopia config list` shows every version)",
                        r.name
                    ))
                })?
        } else {
            let id = format!("{}@{}", r.name, r.version);
            self.node
                .reader
                .document::<XmlConfig>(&id)
                .map_err(Error::from)?
                .ok_or_else(|| Error::NotFound(format!("configuration {id} not found")))?
        };
        let json = String::from_utf8(doc.encode())
            .map_err(|e| Error::Internal(format!("document {} is not UTF-8: {e}", doc.id)))?;
        Ok(Response::new(pb::GetConfigResponse {
            header: header(&self.node, self.node.current_revision()?),
            config: Some(info(&doc)),
            xml: file_bytes(&doc).as_bytes().to_vec(),
            json,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_named_as_far_as_known() {
        let issue = |line, column| Issue {
            line,
            column,
            reason: "bad".into(),
        };
        assert_eq!(where_why(&issue(Some(3), Some(7))), "line 3, column 7: bad");
        assert_eq!(where_why(&issue(Some(3), None)), "line 3: bad");
        assert_eq!(where_why(&issue(None, None)), "bad");
    }

    #[test]
    fn refusals_of_the_log_are_failed_preconditions() {
        let e = refused(
            "t@1",
            Error::Rejected(Rejection::Invalid(
                "t@1 was decided with another hash; a new version is needed".into(),
            )),
        );
        assert_eq!(
            Status::from(e).code(),
            tonic::Code::FailedPrecondition,
            "a refused vote"
        );
        let e = refused("t@1", Error::Rejected(Rejection::Quota("x".into())));
        assert_eq!(Status::from(e).code(), tonic::Code::ResourceExhausted);
        let e = refused(
            "t@1",
            Error::Rejected(Rejection::FailedPrecondition(
                "version 1 is not above the accepted version 2".into(),
            )),
        );
        let s = Status::from(e);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(
            s.message().contains("not above the accepted version 2"),
            "{s:?}"
        );
    }
}
