#[cfg(feature = "mongodb")]
pub mod mongo;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;
