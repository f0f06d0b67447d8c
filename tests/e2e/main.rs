//! The single end-to-end test binary: real registry, containerd and `shoal` processes in network
//! namespaces, built with the `shoal_tests` rig. One module per topic.

mod cli;
mod configure;
mod content;
mod deploy;
mod faults;
mod multi;
mod p2p;
mod rig;
mod security;
mod stream;
