//! Documents: the cache of decoded documents an applier keeps for its
//! batch, and applying the events of the cluster's own collections
//! (fellows, database servers, XML configurations).

use serde_json::{json, Map, Value};
use utopia_raft::event::{ConfigVersion, FellowState, Outcome, Rejection};

use super::{bounds, content, Applier, ApplyError, StateRead};
use crate::keys::{self, Cf};

/// A document as stored: JSON, keys in order. Documents are at most
/// [`bounds::DOCUMENT_NESTING_MAX`] deep, so encoding (which recurses) is
/// bounded.
pub(super) fn doc_bytes(doc: Map<String, Value>) -> Vec<u8> {
    // Serializing a JSON value into a Vec cannot fail.
    serde_json::to_vec(&Value::Object(doc)).unwrap_or_default()
}

/// Decodes a stored JSON document. One that does not decode (or is not an
/// object) was written that way by every replica: a content error.
pub(super) fn doc_decode(
    cf: Cf,
    id: &[u8],
    bytes: &[u8],
) -> Result<Map<String, Value>, ApplyError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => content(format!(
            "document {}/{} is not a JSON object",
            cf.name(),
            crate::printable_key(id)
        )),
        Err(e) => content(format!(
            "document {}/{} cannot be decoded: {e}",
            cf.name(),
            crate::printable_key(id)
        )),
    }
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    /// The column families whose documents are kept decoded for the batch.
    pub(super) fn doc_cached(cf: Cf) -> bool {
        matches!(cf, Cf::Devices | Cf::Zones)
    }

    pub(super) fn get_doc(
        &self,
        cf: Cf,
        id: &str,
    ) -> Result<Option<Map<String, Value>>, ApplyError> {
        if let Some(doc) = self.docs.get(&cf).and_then(|d| d.get(id)) {
            return Ok(Some(doc.clone()));
        }
        match self.get(cf, id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => doc_decode(cf, id.as_bytes(), &bytes).map(Some),
        }
    }

    /// Writes a document, unless it is larger than the event may leave a
    /// document: then the event is rejected.
    pub(super) fn put_doc(
        &mut self,
        cf: Cf,
        id: &str,
        doc: Map<String, Value>,
    ) -> Result<(), ApplyError> {
        let too_large = |bytes: u64, max: u64| {
            content(format!(
                "document {}/{id} would be {bytes} bytes; the limit is {max} bytes (document_bytes_max)",
                cf.name()
            ))
        };
        if Self::doc_cached(cf) {
            let bytes = bounds::json_encoded_bytes(&doc);
            if bytes > self.document_bytes_max {
                return too_large(bytes, self.document_bytes_max);
            }
            let old = self.docs.entry(cf).or_default().insert(id.to_string(), doc);
            if self.journal {
                self.undo.docs.push((cf, id.to_string(), old));
            }
            return Ok(());
        }
        let bytes = doc_bytes(doc);
        if bytes.len() as u64 > self.document_bytes_max {
            return too_large(bytes.len() as u64, self.document_bytes_max);
        }
        self.put(cf, id.as_bytes().to_vec(), bytes);
        Ok(())
    }

    pub(super) fn apply_fellow(
        &mut self,
        at_ms: u64,
        f: &FellowState,
    ) -> Result<Outcome, ApplyError> {
        let id = f.node_id.to_string();
        let mut doc = self.get_doc(Cf::Fellows, &id)?.unwrap_or_default();
        doc.insert("id".into(), json!(f.node_id));
        doc.insert("host".into(), json!(f.host));
        doc.insert("addr".into(), json!(f.addr));
        doc.insert("active".into(), json!(f.active));
        doc.insert(
            "state".into(),
            serde_json::to_value(f.role).unwrap_or(Value::Null),
        );
        doc.insert("weight".into(), json!(f.weight));
        if f.active {
            doc.insert("last_active_ms".into(), json!(at_ms));
        }
        doc.insert("stats".into(), json!(format!("fellow/{id}")));
        self.put_doc(Cf::Fellows, &id, doc)?;
        Ok(Outcome::Done)
    }

    /// Records the address clients reach member `node_id` at, in its
    /// fellows document (the leader's fellow updates keep it).
    pub(super) fn apply_client_address(
        &mut self,
        node_id: u64,
        addr: &str,
    ) -> Result<Outcome, ApplyError> {
        let id = node_id.to_string();
        let mut doc = self.get_doc(Cf::Fellows, &id)?.unwrap_or_else(|| {
            let mut m = Map::new();
            m.insert("id".into(), json!(node_id));
            m
        });
        doc.insert("client_addr".into(), json!(addr));
        self.put_doc(Cf::Fellows, &id, doc)?;
        Ok(Outcome::Done)
    }

    pub(super) fn apply_db_server(
        &mut self,
        at_ms: u64,
        host: &str,
        port: u16,
        kind: &str,
        problem: Option<&String>,
    ) -> Result<Outcome, ApplyError> {
        let id = format!("{host}:{port}:{kind}");
        let mut doc = self.get_doc(Cf::DbServers, &id)?.unwrap_or_else(|| {
            let mut m = Map::new();
            m.insert("id".into(), json!(id));
            m.insert("host".into(), json!(host));
            m.insert("port".into(), json!(port));
            m.insert("type".into(), json!(kind));
            m.insert("first_seen_ms".into(), json!(at_ms));
            m
        });
        match problem {
            None => {
                doc.insert("state".into(), json!("ok"));
                doc.remove("reason");
            }
            Some(reason) => {
                doc.insert("state".into(), json!("problematic"));
                doc.insert("reason".into(), json!(reason));
            }
        }
        doc.insert("updated_ms".into(), json!(at_ms));
        self.put_doc(Cf::DbServers, &id, doc)?;
        Ok(Outcome::Done)
    }

    pub(super) fn apply_config_proposed(
        &mut self,
        at_ms: u64,
        c: &ConfigVersion,
    ) -> Result<Outcome, ApplyError> {
        let id = format!("{}@{}", c.name, c.version);
        if let Some(existing) = self.get_doc(Cf::XmlConfigs, &id)? {
            // Competing proposals for one name and version: the higher
            // weight wins, then the smaller hash, so every replica agrees.
            let w = existing.get("weight").and_then(Value::as_u64).unwrap_or(0);
            let h = existing.get("hash").and_then(Value::as_str).unwrap_or("");
            let state = existing.get("state").and_then(Value::as_str).unwrap_or("");
            let wins =
                (c.weight as u64, std::cmp::Reverse(c.hash.as_str())) > (w, std::cmp::Reverse(h));
            if state != "proposed" || !wins {
                return Ok(Outcome::Done);
            }
        }
        let mut doc = Map::new();
        doc.insert("id".into(), json!(id));
        doc.insert("name".into(), json!(c.name));
        doc.insert("type".into(), json!(c.kind));
        doc.insert("version".into(), json!(c.version));
        doc.insert("hash".into(), json!(c.hash));
        doc.insert("xml".into(), json!(c.xml));
        doc.insert("proposer".into(), json!(c.proposer));
        doc.insert("weight".into(), json!(c.weight));
        doc.insert("state".into(), json!("proposed"));
        doc.insert("proposed_ms".into(), json!(at_ms));
        self.put_doc(Cf::XmlConfigs, &id, doc)?;
        Ok(Outcome::Done)
    }

    pub(super) fn apply_config_decision(
        &mut self,
        at_ms: u64,
        name: &str,
        version: u64,
        hash: &str,
        rejected: Option<&String>,
    ) -> Result<Outcome, ApplyError> {
        let id = format!("{name}@{version}");
        let Some(mut doc) = self.get_doc(Cf::XmlConfigs, &id)? else {
            return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                "no configuration {id} was proposed"
            ))));
        };
        if doc.get("hash").and_then(Value::as_str) != Some(hash) {
            return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                "configuration {id} has another hash"
            ))));
        }
        match rejected {
            Some(reason) => {
                doc.insert("state".into(), json!("rejected"));
                doc.insert("reason".into(), json!(reason));
            }
            None => {
                // Earlier accepted versions of the same name are superseded.
                let prefix = format!("{name}@");
                let end = keys::prefix_end(prefix.as_bytes());
                for (k, v) in self.scan(Cf::XmlConfigs, prefix.as_bytes(), end.as_deref(), 0)? {
                    let mut other = doc_decode(Cf::XmlConfigs, &k, &v)?;
                    let other_version = other.get("version").and_then(Value::as_u64).unwrap_or(0);
                    if other_version < version
                        && other.get("state").and_then(Value::as_str) == Some("accepted")
                    {
                        other.insert("state".into(), json!("superseded"));
                        other.insert("decided_ms".into(), json!(at_ms));
                        self.put(Cf::XmlConfigs, k, doc_bytes(other));
                    }
                }
                doc.insert("state".into(), json!("accepted"));
            }
        }
        doc.insert("decided_ms".into(), json!(at_ms));
        self.put_doc(Cf::XmlConfigs, &id, doc)?;
        Ok(Outcome::Done)
    }
}
