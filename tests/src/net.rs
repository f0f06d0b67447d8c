//! The rig's network: an `unreachable` route for its subnet in the root namespace (installed
//! before any namespace exists, so a stray request from the root namespace to a test address
//! fails locally instead of leaving the machine), a bridge living in its own namespace (host
//! interfaces are never touched), and one namespace per member attached to that bridge.

use std::net::Ipv4Addr;

use crate::alloc::{SUBNET_PREFIX, subnet_of};
use crate::cmd;

/// Everything network-related a rig created; dropping it deletes the namespaces, then the route.
#[derive(Debug)]
pub(crate) struct Network {
    index: u32,
    subnet: String,
    route_added: bool,
    /// Created namespaces, in creation order.
    namespaces: Vec<String>,
}

impl Network {
    /// Install the safety route and the bridge namespace.
    pub(crate) fn create(index: u32) -> Network {
        let subnet = subnet_of(index);
        let mut net = Network {
            index,
            subnet: subnet.clone(),
            route_added: false,
            namespaces: Vec::new(),
        };
        cmd::must("ip", &["route", "add", "unreachable", &subnet]);
        net.route_added = true;
        // Prove the safety net works before anything is reachable inside the namespaces.
        let probe = net.ip(1).to_string();
        let out = cmd::output("ip", &["route", "get", &probe]).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !out.status.success(),
            "shoal rig: `ip route get {probe}` in the root namespace should fail after adding \
             `unreachable {subnet}`, got: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let br = net.ns_name("br");
        net.add_namespace(&br);
        cmd::must("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"]);
        cmd::must("ip", &["-n", &br, "link", "set", "br0", "up"]);
        cmd::must("ip", &["-n", &br, "link", "set", "lo", "up"]);
        net
    }

    /// `shoal-<index>-<member>`.
    pub(crate) fn ns_name(&self, member: &str) -> String {
        format!("shoal-{}-{member}", self.index)
    }

    /// Host `host` of the subnet (`10.213.<index>.<host>`).
    pub(crate) fn ip(&self, host: u8) -> Ipv4Addr {
        format!("{SUBNET_PREFIX}.{}.{host}", self.index)
            .parse()
            .expect("valid IPv4")
    }

    pub(crate) fn subnet(&self) -> &str {
        &self.subnet
    }

    fn add_namespace(&mut self, name: &str) {
        cmd::must("ip", &["netns", "add", name]);
        self.namespaces.push(name.to_string());
    }

    /// Create namespace `shoal-<index>-<member>` with `eth0` = `10.213.<index>.<host>/24` on the
    /// bridge, and loopback up. Returns the namespace name and address.
    pub(crate) fn add_member(&mut self, member: &str, host: u8) -> (String, Ipv4Addr) {
        let ns = self.ns_name(member);
        let br = self.ns_name("br");
        let port = format!("p-{member}");
        let ip = self.ip(host);
        let cidr = format!("{ip}/24");
        self.add_namespace(&ns);
        // Created from inside the bridge namespace so no interface ever appears in the root one.
        cmd::must(
            "ip",
            &[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
        );
        cmd::must(
            "ip",
            &["-n", &br, "link", "set", &port, "master", "br0", "up"],
        );
        cmd::must("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
        cmd::must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        cmd::must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        (ns, ip)
    }

    /// Take the member's bridge port down or up (a network partition of that member).
    pub(crate) fn set_link(&self, member: &str, up: bool) -> Result<(), String> {
        let br = self.ns_name("br");
        let port = format!("p-{member}");
        cmd::run(
            "ip",
            &[
                "-n",
                &br,
                "link",
                "set",
                &port,
                if up { "up" } else { "down" },
            ],
        )
        .map(|_| ())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = cmd::run("ip", &["netns", "del", ns]) {
                eprintln!("shoal rig teardown: {e}");
            }
        }
        if self.route_added
            && let Err(e) = cmd::run("ip", &["route", "del", "unreachable", &self.subnet])
        {
            eprintln!("shoal rig teardown: {e}");
        }
    }
}
