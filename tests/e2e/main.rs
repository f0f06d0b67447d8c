//! The single end-to-end test binary: real registry, containerd and `shoal` processes in network
//! namespaces, built with the `shoal_tests` rig. One module per topic.

mod cli;
mod clients;
mod configure;
mod content;
mod deploy;
mod doctor;
mod doctor_files;
mod doctor_speed;
mod faults;
mod flood;
mod health;
mod herd;
mod history;
mod multi;
mod multi_stream;
mod p2p;
mod rig;
mod security;
mod slow;
mod slow_link;
mod stream;
