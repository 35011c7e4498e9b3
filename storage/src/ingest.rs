//! Topic ownership and message digests for MQTT ingest.
//!
//! Every server may receive every MQTT message; exactly one of them, the
//! owner of the message's device, proposes it. Ownership is weighted
//! rendezvous hashing of the device's document id over the members agreed
//! in the log ([`utopia_raft::event::Event::IngestOwnersChanged`]). The
//! applier checks it again, so the computation must be identical on every
//! replica and every platform: it uses integer arithmetic only.

use utopia_raft::event::IngestMember;

/// The member that owns `key` (a device document id), or None when no
/// member takes part. Members with weight 0 own nothing.
pub fn owner_of(key: &str, members: &[IngestMember]) -> Option<u64> {
    let mut best: Option<(u64, u32, u64)> = None; // (node, weight, distance)
    for m in members.iter().filter(|m| m.weight > 0) {
        let mut h = blake3::Hasher::new();
        h.update(key.as_bytes());
        h.update(&[0]);
        h.update(&m.node_id.to_be_bytes());
        let bytes = h.finalize();
        let x = u64::from_be_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"));
        // Weighted rendezvous: score = weight / -ln(x / 2^64). With
        // distance = 64 - log2(x) (> 0, proportional to -ln), the best
        // member has the largest weight / distance; compare by cross
        // multiplication to stay in integers.
        let distance = (64u64 << 32) - log2_q32(x | 1);
        let better = match best {
            None => true,
            Some((node, w, d)) => {
                let lhs = u128::from(m.weight) * u128::from(d);
                let rhs = u128::from(w) * u128::from(distance);
                lhs > rhs || (lhs == rhs && m.node_id < node)
            }
        };
        if better {
            best = Some((m.node_id, m.weight, distance));
        }
    }
    best.map(|(node, _, _)| node)
}

/// log2(x) in fixed point with 32 fractional bits, x > 0.
fn log2_q32(x: u64) -> u64 {
    let int = 63 - u64::from(x.leading_zeros());
    // Mantissa in [1, 2) as Q1.62.
    let mut y: u128 = if int >= 62 {
        u128::from(x >> (int - 62))
    } else {
        u128::from(x) << (62 - int)
    };
    let mut frac = 0u64;
    for bit in (0..32).rev() {
        y = (y * y) >> 62;
        if y >= 1u128 << 63 {
            y >>= 1;
            frac |= 1 << bit;
        }
    }
    (int << 32) | frac
}

/// The digest a message is known by: blake3 of topic and payload, 16 bytes.
pub fn digest(topic: &str, payload: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&(topic.len() as u64).to_be_bytes());
    h.update(topic.as_bytes());
    h.update(payload);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[(u64, u32)]) -> Vec<IngestMember> {
        weights
            .iter()
            .map(|&(node_id, weight)| IngestMember { node_id, weight })
            .collect()
    }

    #[test]
    fn log2_is_accurate() {
        for x in [1u64, 2, 3, 10, 1000, 123_456_789, u64::MAX / 3, u64::MAX] {
            let got = log2_q32(x) as f64 / (1u64 << 32) as f64;
            let want = (x as f64).log2();
            assert!((got - want).abs() < 1e-6, "log2({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn no_members_no_owner() {
        assert_eq!(owner_of("h/c/1", &[]), None);
        assert_eq!(owner_of("h/c/1", &members(&[(1, 0)])), None);
    }

    #[test]
    fn ownership_spreads_by_weight_and_moves_only_from_the_leaver() {
        let three = members(&[(1, 1), (2, 1), (3, 2)]);
        let two = members(&[(1, 1), (3, 2)]);
        let mut counts = [0u32; 4];
        for i in 0..20_000 {
            let key = format!("host/class/{i}");
            let owner = owner_of(&key, &three).unwrap();
            counts[owner as usize] += 1;
            let after = owner_of(&key, &two).unwrap();
            if owner != 2 {
                assert_eq!(after, owner, "{key} moved although its owner stayed");
            }
        }
        // Weight 2 owns about half, weights 1 about a quarter each.
        assert!((9_000..11_000).contains(&counts[3]), "{counts:?}");
        assert!((4_000..6_000).contains(&counts[1]), "{counts:?}");
        assert!((4_000..6_000).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn digest_separates_topic_from_payload() {
        assert_ne!(digest("a/b", b"c"), digest("a/", b"bc"));
        assert_eq!(digest("a", b"1"), digest("a", b"1"));
    }
}
