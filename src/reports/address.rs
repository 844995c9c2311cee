//! Which addresses a report fetch may connect to.
//!
//! Avara's `report.delivered` names a URL the gateway then fetches from
//! inside the hospital network. Whoever can sign such an event (or whoever
//! controls the DNS of the host it names) could otherwise point the gateway at
//! the site's own services, at the cloud metadata endpoint, or at the gateway
//! itself. So every address a host resolves to is classified here before
//! anything connects, and only globally routable unicast addresses pass
//! (unless the operator allows internal ones for a site whose report store is
//! on site).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused: a short, stable phrase for logs and the
/// report job's error.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

/// Why `ip` is refused even where internal addresses are allowed: it is
/// link-local (the cloud metadata service, a neighbour's auto-configured
/// address), in any of the forms [`forbidden`] knows.
pub fn link_local(ip: IpAddr) -> Option<&'static str> {
    forbidden(ip).filter(|why| why.starts_with("link-local"))
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b) {
        _ if ip.is_unspecified() => "unspecified",
        // 0.0.0.0/8: "this network"; Linux connects 0.x.y.z to the host itself.
        (0, _) => "unspecified",
        (127, _) => "loopback",
        (169, 254) => "link-local (cloud metadata)",
        (10, _) => "private",
        (172, 16..=31) => "private",
        (192, 168) => "private",
        (100, 64..=127) => "shared address space (CGNAT)",
        // 192.0.0.0/24: IETF protocol assignments (NAT64 discovery, DS-Lite).
        (192, 0) if c == 0 => "reserved",
        // 198.18.0.0/15: benchmarking, used inside some sites.
        (198, 18..=19) => "reserved",
        _ if ip.is_broadcast() => "broadcast",
        (224..=239, _) => "multicast",
        // 240.0.0.0/4: reserved for future use, never routed.
        (240..=255, _) => "reserved",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) forms reach
    // the IPv4 address they carry.
    if let Some(v4) = ip.to_ipv4() {
        return forbidden_v4(v4);
    }
    // NAT64 (64:ff9b::/96) translates to the IPv4 address in its low bits.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(low_v4(seg[6], seg[7]));
    }
    // 6to4 (2002::/16) carries an IPv4 address in bits 16..48.
    if seg[0] == 0x2002 {
        return forbidden_v4(low_v4(seg[1], seg[2]));
    }
    Some(match seg[0] {
        s if s & 0xffc0 == 0xfe80 => "link-local",
        // fec0::/10: site-local, deprecated but still private.
        s if s & 0xffc0 == 0xfec0 => "private",
        s if s & 0xfe00 == 0xfc00 => "private (unique local)",
        s if s & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

fn low_v4(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_stays_refused_where_internal_addresses_are_allowed() {
        for (raw, refused) in [
            ("169.254.169.254", true),
            ("fe80::1", true),
            ("::ffff:169.254.169.254", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("192.168.1.10", false),
            ("fd00::1", false),
        ] {
            let ip: IpAddr = raw.parse().unwrap();
            assert_eq!(link_local(ip).is_some(), refused, "{raw}");
        }
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_pass() {
        let table: &[(&str, Option<&str>)] = &[
            // IPv4 loopback, the whole /8.
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            // Cloud metadata and link-local.
            ("169.254.169.254", Some("link-local (cloud metadata)")),
            ("169.254.0.1", Some("link-local (cloud metadata)")),
            // RFC 1918 with their edges.
            ("10.0.0.1", Some("private")),
            ("10.255.255.255", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("172.15.255.255", None),
            ("172.32.0.1", None),
            ("192.168.1.1", Some("private")),
            ("192.169.0.1", None),
            // CGNAT 100.64/10 and its edges.
            ("100.64.0.1", Some("shared address space (CGNAT)")),
            ("100.127.255.255", Some("shared address space (CGNAT)")),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            // Unspecified, this network, broadcast, multicast, reserved.
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("unspecified")),
            ("255.255.255.255", Some("broadcast")),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("240.0.0.1", Some("reserved")),
            ("192.0.0.170", Some("reserved")),
            ("198.18.0.1", Some("reserved")),
            // Public IPv4.
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("1.1.1.1", None),
            ("192.0.2.1", None),
            // IPv6 loopback, unspecified, link-local, unique local, multicast.
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fe80::1", Some("link-local")),
            ("febf:ffff::1", Some("link-local")),
            ("fec0::1", Some("private")),
            ("fc00::1", Some("private (unique local)")),
            ("fd12:3456:789a::1", Some("private (unique local)")),
            ("ff02::1", Some("multicast")),
            ("ff0e::1", Some("multicast")),
            // IPv4-mapped and IPv4-compatible forms of the forbidden ones.
            ("::ffff:127.0.0.1", Some("loopback")),
            (
                "::ffff:169.254.169.254",
                Some("link-local (cloud metadata)"),
            ),
            ("::ffff:10.1.2.3", Some("private")),
            ("::ffff:0.0.0.0", Some("unspecified")),
            ("::127.0.0.1", Some("loopback")),
            ("::10.0.0.1", Some("private")),
            ("::ffff:8.8.8.8", None),
            // NAT64 and 6to4 carrying internal IPv4 addresses.
            ("64:ff9b::7f00:1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("link-local (cloud metadata)")),
            ("64:ff9b::808:808", None),
            ("2002:c0a8:101::1", Some("private")),
            ("2002:808:808::1", None),
            // Public IPv6.
            ("2001:4860:4860::8888", None),
            ("2606:4700:4700::1111", None),
        ];
        for (addr, want) in table {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(forbidden(ip), *want, "{addr}");
        }
    }
}
