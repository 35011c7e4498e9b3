#[cfg(feature = "zookeeper")]
pub mod zookeeper;
#[cfg(feature = "mongodb")]
pub mod mongo;
