//! Loopback ports for the servers the tests start as separate processes.
//!
//! Binding `127.0.0.1:0` and handing the port to a child is racy: the port comes from the kernel's
//! ephemeral range, which every outgoing connection (gRPC channels, Redis clients) also draws
//! from, so it can be taken between the pick and the child's bind (seen in CI as "Address already
//! in use"). Ports below that range are never given to outgoing connections, so the picker chooses
//! there, at random, checks the port can be bound, and never hands one out twice in this process.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The lowest ephemeral port (`/proc/sys/net/ipv4/ip_local_port_range`), 32768 if unknown.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(32768)
}

/// `count` distinct loopback ports that were free when picked and that no other caller in this
/// process has been given.
pub fn free_ports(count: usize) -> Vec<u16> {
    const LOW: u16 = 10_000;
    let high = ephemeral_low().max(LOW + 2_000);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut ports = Vec::with_capacity(count);
    for _ in 0..100_000 {
        if ports.len() == count {
            return ports;
        }
        let port = rand::random_range(LOW..high);
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            ports.push(port);
        }
    }
    panic!("no {count} free loopback ports between {LOW} and {high}");
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}
