//! A private network for the cluster, made of Linux network namespaces (needs root and `ip`):
//! one namespace per host, each joined by a veth pair to a router namespace that forwards
//! between them, and one pair from the harness's own namespace to the router. Partitions are
//! made there as a WAN makes them: packets vanish, nobody is told. A host's cable is pulled by
//! taking its own end of the link down; a cut between hosts is a pair of `blackhole` rules in the
//! router, which drops what it would have forwarded without an ICMP error.
//!
//! Addresses come from 198.18.0.0/15 (set aside for benchmarking networks, RFC 2544), exist only
//! on the links made here, and go away with the namespaces.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use crate::VerifyError;

/// The harness's own link to the router is link number 9.
const HARNESS_LINK: u8 = 9;

/// One host of the network: its namespace and its address.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub name: &'static str,
    pub namespace: String,
    pub ip: IpAddr,
    /// The host's end of its link (inside its namespace).
    interface: String,
    /// The router's end of that link: the host's default route.
    gateway: Ipv4Addr,
}

/// The namespaces, links and routes of one run; all removed when dropped.
pub(crate) struct Network {
    prefix: String,
    router: String,
    pub hosts: Vec<Host>,
    /// The harness's address on its link to the router.
    pub harness_ip: IpAddr,
}

/// Link `link`'s /29: the router's end is `.8·link+1`, the host's `.8·link+2`.
fn link_ips(net: u8, link: u8) -> (Ipv4Addr, Ipv4Addr) {
    (Ipv4Addr::new(198, 18, net, 8 * link + 1), Ipv4Addr::new(198, 18, net, 8 * link + 2))
}

fn ip(args: &[&str]) -> Result<(), VerifyError> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| VerifyError::Setup(format!("ip: {err} (the partition fault needs iproute2)")))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(VerifyError::Setup(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
    }
}

impl Network {
    /// Makes the router and one namespace per name in `hosts`, under names that start with
    /// `dv{net}-` (any left by an earlier run of the same `net` are removed first).
    pub fn create(net: u8, hosts: &[&'static str]) -> Result<Self, VerifyError> {
        let prefix = format!("dv{net}-");
        remove_namespaces(&prefix);
        let router = format!("{prefix}router");
        let (router_end, harness_ip) = link_ips(net, HARNESS_LINK);
        let mut network =
            Self { prefix: prefix.clone(), router: router.clone(), hosts: Vec::new(), harness_ip: harness_ip.into() };
        ip(&["netns", "add", &router])?;
        ip(&["-n", &router, "link", "set", "lo", "up"])?;
        run_in(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // The harness's link: its end in this namespace, a route to every host through the router.
        let (outside, inside) = (format!("{prefix}x"), format!("{prefix}r{HARNESS_LINK}"));
        ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &router])?;
        ip(&["addr", "add", &format!("{harness_ip}/29"), "dev", &outside])?;
        ip(&["link", "set", &outside, "up"])?;
        ip(&["-n", &router, "addr", "add", &format!("{router_end}/29"), "dev", &inside])?;
        ip(&["-n", &router, "link", "set", &inside, "up"])?;
        ip(&["route", "add", &format!("198.18.{net}.0/24"), "via", &router_end.to_string()])?;
        for (i, name) in hosts.iter().enumerate() {
            let link = i as u8 + 1;
            let namespace = format!("{prefix}{name}");
            let (router_end, host_ip) = link_ips(net, link);
            let (at_router, at_host) = (format!("{prefix}r{link}"), format!("{prefix}h{link}"));
            ip(&["netns", "add", &namespace])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &router, "link", "add", &at_router, "type", "veth", "peer", "name", &at_host, "netns", &namespace,
            ])?;
            ip(&["-n", &router, "addr", "add", &format!("{router_end}/29"), "dev", &at_router])?;
            ip(&["-n", &router, "link", "set", &at_router, "up"])?;
            ip(&["-n", &namespace, "addr", "add", &format!("{host_ip}/29"), "dev", &at_host])?;
            ip(&["-n", &namespace, "link", "set", &at_host, "up"])?;
            ip(&["-n", &namespace, "route", "add", "default", "via", &router_end.to_string()])?;
            network.hosts.push(Host { name, namespace, ip: host_ip.into(), interface: at_host, gateway: router_end });
        }
        Ok(network)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).expect("a host of the network")
    }

    /// Pulls `host`'s cable (its end of the link goes down: the host gets "network
    /// unreachable" at once; the rest of the network hears nothing from it, until the router,
    /// finding no neighbour, answers new connections with "host unreachable"), or plugs it back.
    pub fn set_cable(&self, host: &str, plugged: bool) -> Result<(), VerifyError> {
        let host = self.host(host);
        let state = if plugged { "up" } else { "down" };
        ip(&["-n", &host.namespace, "link", "set", &host.interface, state])?;
        if plugged {
            // The default route went with the link.
            let _ = ip(&["-n", &host.namespace, "route", "replace", "default", "via", &host.gateway.to_string()]);
        }
        Ok(())
    }

    /// Cuts (or mends) every path between a host of `one` and a host of `other`, both ways.
    pub fn set_cut(&self, one: &[&str], other: &[&str], cut: bool) -> Result<(), VerifyError> {
        let verb = if cut { "add" } else { "del" };
        for a in one {
            for b in other {
                let (a, b) = (self.host(a).ip.to_string(), self.host(b).ip.to_string());
                for (from, to) in [(&a, &b), (&b, &a)] {
                    ip(&["-n", &self.router, "rule", verb, "from", from, "to", to, "blackhole"])?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting the router's namespace deletes its ends of the links, and so the harness's
        // end and its route.
        remove_namespaces(&self.prefix);
    }
}

/// Runs a program inside `namespace`.
fn run_in(namespace: &str, program: &[&str]) -> Result<(), VerifyError> {
    let mut args = vec!["netns", "exec", namespace];
    args.extend_from_slice(program);
    ip(&args)
}

/// Deletes every namespace whose name starts with `prefix`.
fn remove_namespaces(prefix: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(prefix) {
            let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        }
    }
}

/// Whether namespaces can be made here (root, `ip` installed, not forbidden by a container).
pub(crate) fn available() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        return false;
    }
    let probe = format!("dv-probe-{}", std::process::id());
    let made = ip(&["netns", "add", &probe]).is_ok();
    let _ = Command::new("ip").args(["netns", "del", &probe]).stderr(Stdio::null()).status();
    made
}

/// The command line that runs `program` inside `namespace`: `ip netns exec` enters it and then
/// execs the program, so the process it starts is the program itself (signals reach it).
pub(crate) fn command_in(namespace: Option<&str>, program: &std::path::Path) -> Command {
    match namespace {
        Some(namespace) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", namespace]).arg(program);
            command
        }
        None => Command::new(program),
    }
}
