//! Credentials as gRPC carries them: the token in the `token` metadata
//! entry (etcd's name) and the client certificate of the TLS connection,
//! handed to the core's check ([`crate::node::Node::authorize`]) through
//! [`Presented`]; and what a transaction needs, read from its request.

use tonic::metadata::MetadataMap;
use utopia_proto::v1 as pb;
use utopia_raft::event::Access;

use crate::node::access::Presented;
use crate::node::credentials::TokenError;

pub use crate::node::access::{Caller, Need};

/// The metadata entry a request carries its token in (etcd's name).
pub const TOKEN_METADATA_KEY: &str = "token";

impl<T> Presented for tonic::Request<T> {
    fn token(&self) -> Option<Result<&str, TokenError>> {
        token_of(self.metadata())
    }

    fn certificate_user(&self) -> Option<String> {
        certificate_user(self)
    }
}

/// The token in the metadata, if any: `Err` when it is not ASCII.
fn token_of(md: &MetadataMap) -> Option<Result<&str, TokenError>> {
    md.get(TOKEN_METADATA_KEY)
        .map(|v| v.to_str().map_err(|_| TokenError::Malformed))
}

/// The subject common name of the first (leaf) client certificate, when
/// it is a text string.
fn certificate_user<T>(req: &tonic::Request<T>) -> Option<String> {
    use x509_cert::der::asn1::ObjectIdentifier;
    use x509_cert::der::{Decode, Tag, Tagged};
    // id-at-commonName (RFC 4519).
    const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    let certs = req.peer_certs()?;
    let cert = x509_cert::Certificate::from_der(certs.first()?.as_ref()).ok()?;
    let cn = cert
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == COMMON_NAME)?;
    match cn.value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
            std::str::from_utf8(cn.value.value())
                .ok()
                .map(str::to_string)
        }
        _ => None,
    }
}

/// What a transaction needs, part by part: read on every compare and
/// range, write on every put and delete, in both branches.
pub fn txn_needs(t: &pb::TxnRequest) -> Need<'_> {
    use pb::request_op::Request as Op;
    let mut needs: Vec<(Access, &[u8], &[u8])> = t
        .compare
        .iter()
        .map(|c| (Access::Read, c.key.as_slice(), c.range_end.as_slice()))
        .collect();
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => needs.push((Access::Read, &r.key[..], &r.range_end[..])),
            Some(Op::RequestPut(p)) => needs.push((Access::Write, &p.key[..], &[][..])),
            Some(Op::RequestDeleteRange(d)) => {
                needs.push((Access::Write, &d.key[..], &d.range_end[..]))
            }
            None => {}
        }
    }
    Need::Txn(needs)
}
