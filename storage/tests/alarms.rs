//! The readers keep the alarms record between changes of it: what they
//! answer follows every raise and disarm applied, and a snapshot install.

mod common;

use utopia_raft::event::{AlarmKind, Event, Request};
use utopia_raft::openraft_api::{EntryOf, EntryPayload, RaftStateMachine};
use utopia_raft::TypeConfig;

fn entry(index: u64, event: Event) -> EntryOf<TypeConfig> {
    EntryOf::<TypeConfig> {
        log_id: common::log_id(index),
        payload: EntryPayload::Normal(Request::new(1_000 + index, event)),
    }
}

async fn apply(store: &mut utopia_storage::OpenedStore, index: u64, event: Event) {
    let entries = futures::stream::iter([Ok((entry(index, event), None))]);
    store.state_machine.apply(entries).await.unwrap();
}

fn raise(node_id: u64, disarms: u64) -> Event {
    Event::AlarmRaised {
        node_id,
        alarm: AlarmKind::NoSpace,
        disarms,
    }
}

#[tokio::test]
async fn the_readers_alarms_follow_what_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = utopia_storage::open(&dir.path().join("a")).unwrap();
    assert!(store.reader.alarms().unwrap().is_empty());
    apply(&mut store, 1, raise(2, 0)).await;
    let alarms = store.reader.alarms().unwrap();
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(alarms[0].node_id, 2);
    // Read again without a change: the same answer.
    assert_eq!(store.reader.alarms().unwrap(), alarms);
    apply(
        &mut store,
        2,
        Event::AlarmDisarmed {
            node_id: 0,
            alarm: AlarmKind::NoSpace,
        },
    )
    .await;
    assert!(store.reader.alarms().unwrap().is_empty());
    apply(&mut store, 3, raise(3, 1)).await;
    assert_eq!(store.reader.alarms().unwrap()[0].node_id, 3);

    // A member whose alarms were read while clear installs the snapshot
    // of one with an alarm raised.
    let snap = store
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a snapshot");
    let mut other = utopia_storage::open(&dir.path().join("b")).unwrap();
    assert!(other.reader.alarms().unwrap().is_empty());
    other
        .state_machine
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(other.reader.alarms().unwrap()[0].node_id, 3);
}
