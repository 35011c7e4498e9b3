//! Devices, zones, fellows, database servers, configurations and statistics; determinism and what stops the applier.

use super::*;

#[test]
fn documents_updated_many_times_in_one_batch_match_one_event_per_batch() {
    let events: Vec<(u64, Event)> = (0..40u64)
        .map(|n| {
            let zone = if n % 7 == 0 { "garage" } else { "kitchen" };
            let json = format!("{{\"n\":{n},\"t\":{}.25}}", n % 5);
            (
                100 + n,
                device(zone, "temp", &["x", &(n % 3).to_string()], &json),
            )
        })
        .collect();
    let mut together = MemState::default();
    together.apply_batch(events.clone());
    let mut apart = MemState::default();
    for e in events {
        apart.apply_batch(vec![e]);
    }
    assert_eq!(together.data, apart.data);
    assert_eq!(
        together.doc(Cf::Devices, "gw1/thermo/7")["last_seen_ms"],
        139
    );
}

#[test]
fn device_data_builds_documents_zones_and_indexes() {
    let mut s = MemState::default();
    s.apply_batch(vec![(5, device("kitchen", "temp", &[], "21.5"))]);
    s.apply_batch(vec![(
        6,
        device("kitchen", "weird", &["a", "b"], "{\"c\":1}"),
    )]);
    let d = s.doc(Cf::Devices, "gw1/thermo/7");
    assert_eq!(d["zone"], "kitchen");
    assert_eq!(d["data"]["temp"], 21.5);
    assert_eq!(
        d["data"]["weird"]["a"]["b"]["c"], 1,
        "unknown post types nest by path"
    );
    assert_eq!(d["first_seen_ms"], 5);
    assert_eq!(d["last_seen_ms"], 6);
    assert_eq!(d["topic_focus"], "/gw1/kitchen/thermo/7");
    assert_eq!(s.doc(Cf::Zones, "kitchen")["device_count"], 1);
    assert!(s
        .get(
            Cf::DeviceIndex,
            &keys::device_index_key(DeviceIndex::Zone, "kitchen", "gw1/thermo/7")
        )
        .unwrap()
        .is_some());

    // Moving zones updates both zone documents and the index.
    s.apply(device("garage", "temp", &[], "3"));
    assert_eq!(s.doc(Cf::Zones, "kitchen")["device_count"], 0);
    assert_eq!(s.doc(Cf::Zones, "garage")["device_count"], 1);
    assert!(s
        .get(
            Cf::DeviceIndex,
            &keys::device_index_key(DeviceIndex::Zone, "kitchen", "gw1/thermo/7")
        )
        .unwrap()
        .is_none());
    // Device events do not touch the key-value revision.
    assert_eq!(s.apply(put("k", "v")).revision, 1);
}

#[test]
fn a_zone_document_keeps_a_count_not_its_device_list() {
    let mut s = MemState::default();
    let register = |id: u64, zone: &str| Event::DeviceRegistered {
        host: "gw1".into(),
        zone: zone.into(),
        class: "cam".into(),
        device_id: format!("{id:04}"),
    };
    let mut stored_bytes = Vec::new();
    for id in 0..200 {
        s.apply(register(id, "hall"));
        stored_bytes.push(s.get(Cf::Zones, b"hall").unwrap().unwrap().len());
    }
    let hall = s.doc(Cf::Zones, "hall");
    assert_eq!(hall["device_count"], 200);
    assert!(
        hall.get("devices").is_none(),
        "the device list is served from the zone index, not stored: {hall}"
    );
    // What a new device rewrites does not grow with the zone (a digit or
    // two of the count at most).
    let (first, last) = (stored_bytes[0], stored_bytes[199]);
    assert!(last <= first + 2, "{first} bytes, then {last}");
    // Moving a device out counts it out; the index says which devices.
    s.apply(register(7, "yard"));
    assert_eq!(s.doc(Cf::Zones, "hall")["device_count"], 199);
    assert_eq!(s.doc(Cf::Zones, "yard")["device_count"], 1);
    assert!(s
        .get(
            Cf::DeviceIndex,
            &keys::device_index_key(DeviceIndex::Zone, "yard", "gw1/cam/0007")
        )
        .unwrap()
        .is_some());
}

#[test]
fn invalid_device_json_is_rejected_without_writes() {
    let mut s = MemState::default();
    let r = s.apply(device("z", "temp", &[], "{nope"));
    assert!(matches!(
        r.outcome,
        Outcome::Rejected(Rejection::Invalid(_))
    ));
    // Nothing but the count of rejected events.
    assert_eq!(
        s.data.keys().collect::<Vec<_>>(),
        vec![&(Cf::SmMeta, keys::meta::EVENTS_REJECTED.to_vec())]
    );
}

#[test]
fn stats_a_build_kept_per_day_are_folded_into_totals() {
    let mut s = MemState::default();
    // As builds before the totals wrote it: 2026-01-01 and 01-02.
    let old = r#"{"daily_attempts":2.5,"daily_failures":0.5,"days":[{"attempts":3,"day":20454,"failures":1},{"attempts":2,"day":20455,"failures":0}],"id":"d1","monthly_attempts":5,"monthly_failures":1,"today_attempts":2,"today_failures":0,"type":"device","used_ms":1767312125000,"weekly_attempts":5,"weekly_failures":1,"yearly_attempts":5,"yearly_failures":1}"#;
    s.data
        .insert((Cf::Stats, b"device/d1".to_vec()), old.as_bytes().to_vec());
    let inc = |counter| Event::StatIncremented {
        id: "d1".into(),
        kind: "device".into(),
        counter,
        by: 1,
    };
    let day = 86_400_000;
    // Sunday 2026-01-04: the same ISO week as Thursday 01-01.
    s.apply_batch(vec![(20_457 * day + 5, inc(StatCounter::Attempts))]);
    let d = s.doc(Cf::Stats, "device/d1");
    assert_eq!(d["total_attempts"], 6, "{d}");
    assert_eq!(d["total_failures"], 1, "{d}");
    assert_eq!(d["today_attempts"], 1, "{d}");
    assert_eq!(d["today_failures"], 0, "{d}");
    assert_eq!(d["since"], "2026-01-01", "{d}");
    assert_eq!(d["date"], "2026-01-04", "{d}");
    assert_eq!(d["daily_attempts"], 1.5, "{d}");
    assert_eq!(d["daily_failures"], 0.25, "{d}");
    assert_eq!(d["weekly_attempts"], 6.0, "{d}");
    assert_eq!(d["counters"]["commands"]["total"], 1, "{d}");
    assert!(d.get("days").is_none(), "{d}");
}

#[test]
fn configs_pick_the_heavier_proposal_and_supersede() {
    let mut s = MemState::default();
    let prop = |version, hash: &str, weight| {
        Event::ConfigProposed(ConfigVersion {
            name: "thermo".into(),
            kind: "config".into(),
            version,
            hash: hash.into(),
            xml: "<x/>".into(),
            proposer: 1,
            weight,
        })
    };
    s.apply(prop(1, "aaa", 1));
    s.apply(prop(1, "bbb", 5));
    s.apply(prop(1, "ccc", 2));
    assert_eq!(s.doc(Cf::XmlConfigs, "thermo@1")["hash"], "bbb");
    s.apply(Event::ConfigAccepted {
        name: "thermo".into(),
        version: 1,
        hash: "bbb".into(),
    });
    s.apply(prop(2, "ddd", 1));
    s.apply(Event::ConfigAccepted {
        name: "thermo".into(),
        version: 2,
        hash: "ddd".into(),
    });
    assert_eq!(s.doc(Cf::XmlConfigs, "thermo@1")["state"], "superseded");
    assert_eq!(s.doc(Cf::XmlConfigs, "thermo@2")["state"], "accepted");
    let r = s.apply(Event::ConfigRejected {
        name: "nope".into(),
        version: 1,
        hash: "x".into(),
        reason: "r".into(),
    });
    assert!(matches!(r.outcome, Outcome::Rejected(_)));
}

#[test]
fn fellows_and_db_servers() {
    let mut s = MemState::default();
    s.apply(Event::FellowStateChanged(FellowState {
        node_id: 1,
        host: "a".into(),
        addr: "127.0.0.1:1".into(),
        active: true,
        role: utopia_raft::event::FellowRole::Leader,
        weight: 3,
    }));
    assert_eq!(s.doc(Cf::Fellows, "1")["state"], "leader");
    s.apply(Event::DbServerRegistered {
        host: "db".into(),
        port: 27017,
        kind: "mongodb".into(),
    });
    s.apply(Event::DbServerProblematic {
        host: "db".into(),
        port: 27017,
        kind: "mongodb".into(),
        reason: "down".into(),
    });
    let d = s.doc(Cf::DbServers, "db:27017:mongodb");
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("problematic"), Some("down"))
    );
}

/// `utopia db remove` deletes a database server's document; a server
/// that is not registered cannot be removed, nor marked problematic (a
/// mirror's late report must not bring back a removed server); registering
/// it again makes it ok and clears the reason.
#[test]
fn db_servers_are_removed_and_re_added_through_the_log() {
    let mut s = MemState::default();
    let db = |port| (String::from("db"), port, String::from("mongodb"));
    let register =
        |(host, port, kind): (String, u16, String)| Event::DbServerRegistered { host, port, kind };
    let problematic = |(host, port, kind): (String, u16, String)| Event::DbServerProblematic {
        host,
        port,
        kind,
        reason: "verify failed".into(),
    };
    let remove =
        |(host, port, kind): (String, u16, String)| Event::DbServerRemoved { host, port, kind };
    assert!(matches!(
        s.apply(remove(db(1))).outcome,
        Outcome::Rejected(Rejection::NotFound(_))
    ));
    assert!(matches!(
        s.apply(problematic(db(1))).outcome,
        Outcome::Rejected(Rejection::NotFound(_))
    ));
    assert!(s.get(Cf::DbServers, b"db:1:mongodb").unwrap().is_none());

    assert_eq!(s.apply(register(db(1))).outcome, Outcome::Done);
    assert_eq!(s.apply(problematic(db(1))).outcome, Outcome::Done);
    assert_eq!(s.doc(Cf::DbServers, "db:1:mongodb")["state"], "problematic");
    assert_eq!(s.apply(register(db(1))).outcome, Outcome::Done);
    let d = s.doc(Cf::DbServers, "db:1:mongodb");
    assert_eq!(d["state"], "ok");
    assert!(d.get("reason").is_none());

    assert_eq!(s.apply(remove(db(1))).outcome, Outcome::Done);
    assert!(s.get(Cf::DbServers, b"db:1:mongodb").unwrap().is_none());
    assert!(matches!(
        s.apply(problematic(db(1))).outcome,
        Outcome::Rejected(Rejection::NotFound(_))
    ));
    assert!(s.get(Cf::DbServers, b"db:1:mongodb").unwrap().is_none());
}

/// Fields a document holds that this build does not write (a newer
/// build's, or another event's) survive every event that rewrites it.
#[test]
fn unknown_fields_survive_a_rewrite_of_every_document_kind() {
    let mut s = MemState::default();
    let fellow = |active| {
        Event::FellowStateChanged(FellowState {
            node_id: 1,
            host: "a".into(),
            addr: "127.0.0.1:1".into(),
            active,
            role: utopia_raft::event::FellowRole::Follower,
            weight: 1,
        })
    };
    let db = || Event::DbServerRegistered {
        host: "db".into(),
        port: 1,
        kind: "mongodb".into(),
    };
    let config = |version| {
        Event::ConfigProposed(ConfigVersion {
            name: "c".into(),
            kind: "config".into(),
            version,
            hash: format!("h{version}"),
            xml: "<x/>".into(),
            proposer: 1,
            weight: 1,
        })
    };
    let accept = |version| Event::ConfigAccepted {
        name: "c".into(),
        version,
        hash: format!("h{version}"),
    };
    let stat = || Event::StatIncremented {
        id: "d1".into(),
        kind: "device".into(),
        counter: StatCounter::Attempts,
        by: 1,
    };
    s.apply(device("hall", "temp", &[], "1"));
    s.apply(fellow(true));
    s.apply(db());
    s.apply(config(1));
    s.apply(accept(1));
    s.apply(stat());
    let docs = [
        (Cf::Devices, "gw1/thermo/7"),
        (Cf::Zones, "hall"),
        (Cf::Fellows, "1"),
        (Cf::DbServers, "db:1:mongodb"),
        (Cf::XmlConfigs, "c@1"),
        (Cf::Stats, "device/d1"),
    ];
    for (cf, id) in docs {
        let mut doc = s.doc(cf, id);
        doc["from_a_newer_build"] = json!({"kept": [1, 2]});
        s.data.insert(
            (cf, id.as_bytes().to_vec()),
            serde_json::to_vec(&doc).unwrap(),
        );
    }
    s.apply(device("hall", "temp", &[], "2"));
    s.apply(device("kitchen", "temp", &[], "3"));
    s.apply(fellow(false));
    s.apply(db());
    s.apply(config(2));
    s.apply(accept(2));
    s.apply(stat());
    for (cf, id) in docs {
        let doc = s.doc(cf, id);
        assert_eq!(
            doc["from_a_newer_build"],
            json!({"kept": [1, 2]}),
            "{}/{id}: {doc}",
            cf.name()
        );
    }
    assert_eq!(s.doc(Cf::XmlConfigs, "c@1")["state"], "superseded");
    assert_eq!(s.doc(Cf::Stats, "device/d1")["today_attempts"], 2);
    assert_eq!(s.doc(Cf::Stats, "device/d1")["total_attempts"], 2);
}

#[test]
fn replay_is_deterministic() {
    let events = vec![
        (1, put("a", "1")),
        (2, Event::LeaseGrant { id: 9, ttl_s: 1 }),
        (
            3,
            Event::Put(PutOp {
                key: b("l"),
                value: b("x"),
                lease: 9,
                prev_kv: false,
            }),
        ),
        (4, device("z", "p", &["q"], "[1,2]")),
        (5_000, Event::LeaseExpired { id: 9 }),
        (6_000, del("a", "\0")),
    ];
    let mut one = MemState::default();
    one.apply_batch(events.clone());
    let mut two = MemState::default();
    for e in events {
        two.apply_batch(vec![e]);
    }
    assert_eq!(one.data, two.data, "one batch or many, the same bytes");
}

#[test]
fn corrupt_records_name_their_key() {
    let mut s = MemState::default();
    s.data.insert((Cf::Kv, b"bad".to_vec()), vec![0xff, 0x00]);
    let mut applier = Applier::new(&s);
    let err = applier
        .apply(&Request::new(0, put("bad", "x")))
        .unwrap_err();
    assert!(
        err.to_string().contains("kv") && err.to_string().contains("bad"),
        "{err}"
    );
}

#[test]
fn events_from_a_newer_build_stop_the_applier() {
    let s = MemState::default();
    let mut applier = Applier::new(&s);
    let mut req = Request::new(0, put("k", "v"));
    req.version = event::EVENT_VERSION + 1;
    let err = applier.apply(&req).unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");
}
