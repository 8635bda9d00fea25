//! Unit and property tests of identities, port ranges and CIDRs.
use super::{ports::PortRangeError, *};
use proptest::prelude::*;

fn id(s: &str) -> Identity {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn id_err(s: &str) -> IdentityError {
    s.parse::<Identity>().expect_err(s)
}

#[test]
fn port_ranges_parse_and_display() {
    let single: PortRange = "5432/tcp".parse().unwrap();
    assert_eq!(
        single,
        PortRange {
            proto: Protocol::Tcp,
            first: 5432,
            last: 5432
        }
    );
    assert_eq!(single.to_string(), "5432/tcp");
    let range: PortRange = "8000-8099/tcp".parse().unwrap();
    assert_eq!(range.to_string(), "8000-8099/tcp");
    assert_eq!(range.ports().count(), 100);
    assert!(range.contains(8050, Protocol::Tcp));
    assert!(!range.contains(8050, Protocol::Udp));
    assert!(!range.contains(8100, Protocol::Tcp));
    let dns: PortRange = "53/udp".parse().unwrap();
    assert_eq!(dns.proto, Protocol::Udp);
    assert!("8080-8080/tcp".parse::<PortRange>().unwrap().to_string() == "8080/tcp");
    assert!("65535/udp".parse::<PortRange>().is_ok());
}

#[test]
fn port_range_errors() {
    let err = |s: &str| s.parse::<PortRange>().unwrap_err();
    assert_eq!(
        err("70000/tcp").to_string(),
        "port 70000 in `70000/tcp` is out of range"
    );
    assert_eq!(err("70000/tcp").help(), "ports are 1-65535");
    assert_eq!(err("0/tcp").to_string(), "port 0 in `0/tcp` is not a port");
    assert_eq!(err("99999999999999999999/tcp").help(), "ports are 1-65535");
    assert_eq!(err("5432").help(), "write `5432/tcp` or `5432/udp`");
    assert!(
        matches!(err("5432/sctp"), PortRangeError::UnknownProtocol { proto, .. } if proto == "sctp")
    );
    assert!(matches!(err("+80/tcp"), PortRangeError::NotANumber { .. }));
    assert!(matches!(err("80-/tcp"), PortRangeError::NotANumber { .. }));
    assert!(matches!(err("/tcp"), PortRangeError::NotANumber { .. }));
    assert_eq!(err("8099-8000/tcp").help(), "write `8000-8099/tcp`");
}

#[test]
fn overlaps_requires_same_protocol_and_a_shared_port() {
    let r = |s: &str| s.parse::<PortRange>().unwrap();
    assert!(r("8000-8099/tcp").overlaps(&r("8099/tcp")));
    assert!(r("8099/tcp").overlaps(&r("8000-8099/tcp")));
    assert!(!r("8000-8099/tcp").overlaps(&r("8100/tcp")));
    assert!(!r("53/tcp").overlaps(&r("53/udp")));
}

#[test]
fn identities_parse() {
    assert_eq!(
        id("unit:payments-api.service"),
        Identity::Unit("payments-api.service".into())
    );
    assert_eq!(id("unit:getty@tty1.service").kind(), "unit");
    assert_eq!(id("unit:-.slice"), Identity::Unit("-.slice".into()));
    assert_eq!(id("cgroup:/"), Identity::Cgroup("/".into()));
    assert_eq!(
        id("cgroup://system.slice//foo.service/./"),
        Identity::Cgroup("/system.slice/foo.service".into())
    );
    assert_eq!(id("user:postgres"), Identity::User("postgres".into()));
    assert_eq!(id("user:HOST$"), Identity::User("HOST$".into()));
    assert_eq!(id("group:secops"), Identity::Group("secops".into()));
    assert_eq!(id("uid:0"), Identity::Uid(0));
    assert_eq!(id("gid:4294967294"), Identity::Gid(4_294_967_294));
    assert!(!id("peer:10.0.0.0/8").is_local());
    assert!(id("uid:1000").is_local());
}

#[test]
fn peers_normalise() {
    assert_eq!(id("peer:10.1.2.3").to_string(), "peer:10.1.2.3/32");
    assert_eq!(id("peer:2001:db8::/32").to_string(), "peer:2001:db8::/32");
    assert_eq!(id("peer:::1").to_string(), "peer:::1/128");
    assert_eq!(
        id("peer:::ffff:10.0.0.0/104").to_string(),
        "peer:10.0.0.0/8"
    );
    assert_eq!(id("peer:::ffff:10.1.2.3").to_string(), "peer:10.1.2.3/32");
    assert_eq!(id("peer:0.0.0.0/0").to_string(), "peer:0.0.0.0/0");
}

#[test]
fn cidr_contains() {
    let net: IpCidr = "10.20.0.0/16".parse().unwrap();
    assert!(net.contains("10.20.255.1".parse().unwrap()));
    assert!(net.contains("::ffff:10.20.0.9".parse().unwrap()));
    assert!(!net.contains("10.21.0.1".parse().unwrap()));
    assert!(!net.contains("2001:db8::1".parse().unwrap()));
    let all: IpCidr = "::/0".parse().unwrap();
    assert!(all.contains("2001:db8::1".parse().unwrap()));
}

#[test]
fn cidr_errors() {
    let err = id_err("peer:10.0.0.1/24");
    assert_eq!(
        err.to_string(),
        "`peer:10.0.0.1/24` is not a network: `10.0.0.1/24` has host bits set beyond the /24 prefix"
    );
    assert_eq!(
        err.help().unwrap(),
        "use the network address `10.0.0.0/24`, or `10.0.0.1` for that single host"
    );
    assert!(matches!(
        id_err("peer:10.0.0.0/33"),
        IdentityError::Peer {
            source: CidrError::PrefixTooLong { .. },
            ..
        }
    ));
    assert!(matches!(
        id_err("peer:10.0.0/8"),
        IdentityError::Peer {
            source: CidrError::Address { .. },
            ..
        }
    ));
    assert!(matches!(
        id_err("peer:10.0.0.0/+8"),
        IdentityError::Peer {
            source: CidrError::Prefix { .. },
            ..
        }
    ));
}

#[test]
fn identity_errors_say_what_and_how_to_fix() {
    let err = id_err("postgres");
    assert!(
        err.to_string().contains("unit:NAME.service, cgroup:/PATH"),
        "{err}"
    );
    assert_eq!(
        id_err("10.0.0.0/8").help().unwrap(),
        "write `peer:10.0.0.0/8`"
    );
    assert_eq!(
        id_err("nginx.service").help().unwrap(),
        "write `unit:nginx.service`"
    );
    assert_eq!(
        id_err("ip:10.0.0.1").help().unwrap(),
        "write `peer:10.0.0.1`"
    );
    assert_eq!(id_err("usr:bob").help().unwrap(), "write `user:bob`");
    assert_eq!(
        id_err("Unit:a.service").help().unwrap(),
        "write `unit:a.service`"
    );
    assert_eq!(
        id_err("unit:nginx").to_string(),
        "`unit:nginx` has no unit type: units are NAME.service, .socket, .scope, .slice, .mount or .swap"
    );
    assert_eq!(
        id_err("unit:nginx").help().unwrap(),
        "write `unit:nginx.service`"
    );
    assert!(matches!(
        id_err("unit:backup.timer"),
        IdentityError::UnitWithoutCgroup { .. }
    ));
    assert!(matches!(
        id_err("unit:foo.txt"),
        IdentityError::UnitType { .. }
    ));
    assert!(matches!(
        id_err("unit:.service"),
        IdentityError::UnitType { .. }
    ));
    assert_eq!(
        id_err("unit:getty@.service").help().unwrap(),
        "name an instance, e.g. `unit:getty@INSTANCE.service`"
    );
    assert!(matches!(
        id_err("unit:a b.service"),
        IdentityError::BadChar { ch: ' ', .. }
    ));
    assert_eq!(
        id_err("cgroup:system.slice").help().unwrap(),
        "write `cgroup:/system.slice`"
    );
    assert!(matches!(
        id_err("cgroup:/a/../b"),
        IdentityError::CgroupDotDot { .. }
    ));
    assert_eq!(
        id_err("cgroup:/sys/fs/cgroup/system.slice").help().unwrap(),
        "write `cgroup:/system.slice`"
    );
    assert!(matches!(
        id_err("cgroup:/a\nb"),
        IdentityError::BadChar { .. }
    ));
    assert_eq!(id_err("user:1000").help().unwrap(), "write `uid:1000`");
    assert_eq!(id_err("group:27").help().unwrap(), "write `gid:27`");
    assert!(matches!(
        id_err("user:-rf"),
        IdentityError::BadChar { ch: '-', .. }
    ));
    assert!(matches!(id_err("user:a/b"), IdentityError::BadChar { .. }));
    assert!(matches!(id_err("uid:4294967295"), IdentityError::Id { .. }));
    assert!(matches!(id_err("uid:-1"), IdentityError::Id { .. }));
    assert!(matches!(id_err("gid:abc"), IdentityError::Id { .. }));
    assert!(matches!(
        id_err("user:"),
        IdentityError::Empty { kind: "user", .. }
    ));
    assert!(matches!(id_err("user:$"), IdentityError::BadChar { .. }));
}

#[test]
fn serde_uses_the_string_form() {
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Row {
        who: Identity,
        ports: PortRange,
    }
    let row = Row {
        who: id("peer:10.0.0.0/8"),
        ports: "8000-8099/tcp".parse().unwrap(),
    };
    let json = serde_json::to_string(&row).unwrap();
    assert_eq!(json, r#"{"who":"peer:10.0.0.0/8","ports":"8000-8099/tcp"}"#);
    assert_eq!(serde_json::from_str::<Row>(&json).unwrap(), row);
    let bad = serde_json::from_str::<Row>(r#"{"who":"bob","ports":"1/tcp"}"#).unwrap_err();
    assert!(
        bad.to_string().contains("`bob` is not an identity"),
        "{bad}"
    );
}

/// Identities built from their parts, covering every kind.
fn any_identity() -> impl Strategy<Value = Identity> {
    let name = "[a-z_][a-z0-9_.-]{0,20}";
    prop_oneof![
        (
            "[A-Za-z0-9_:.-]{1,20}(@[a-z0-9]{1,5})?",
            prop::sample::select(&UNIT_TYPES_WITH_CGROUP[..])
        )
            .prop_map(|(stem, ty)| Identity::Unit(format!("{stem}.{ty}"))),
        prop::collection::vec("[^/\\p{Cc}]{1,12}", 0..4).prop_filter_map(
            "no dot components",
            |parts| {
                (!parts.iter().any(|p| p == "." || p == "..")
                    && parts.first().is_none_or(|p| p != "sys"))
                .then(|| Identity::Cgroup(format!("/{}", parts.join("/"))))
            }
        ),
        name.prop_filter("not numeric", |n| !n.bytes().all(|b| b.is_ascii_digit()))
            .prop_map(Identity::User),
        name.prop_filter("not numeric", |n| !n.bytes().all(|b| b.is_ascii_digit()))
            .prop_map(Identity::Group),
        (0..u32::MAX).prop_map(Identity::Uid),
        (0..u32::MAX).prop_map(Identity::Gid),
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| Identity::Peer(IpCidr {
            addr: IpAddr::V4(Ipv4Addr::from(a & v4_mask(p))),
            prefix: p
        })),
        (any::<u128>(), 0u8..=128).prop_filter_map("not v4-mapped", |(a, p)| {
            let addr = Ipv6Addr::from(a & v6_mask(p));
            (p < 96 || addr.to_ipv4_mapped().is_none()).then_some(Identity::Peer(IpCidr {
                addr: IpAddr::V6(addr),
                prefix: p,
            }))
        }),
    ]
}

proptest! {
    #[test]
    fn identity_display_round_trips(identity in any_identity()) {
        let text = identity.to_string();
        prop_assert_eq!(text.parse::<Identity>(), Ok(identity), "{}", text);
    }

    #[test]
    fn port_range_display_round_trips(
        a in 1u16..,
        b in 1u16..,
        udp in any::<bool>(),
    ) {
        let range = PortRange {
            proto: if udp { Protocol::Udp } else { Protocol::Tcp },
            first: a.min(b),
            last: a.max(b),
        };
        prop_assert_eq!(range.to_string().parse::<PortRange>(), Ok(range));
    }

    /// Whatever a user writes, if it parses, its canonical form parses to
    /// the same value (normalisation is idempotent) and nothing panics.
    #[test]
    fn parsed_identities_are_canonical(text in "[a-z]{0,7}:?[ -~]{0,40}") {
        if let Ok(identity) = text.parse::<Identity>() {
            prop_assert_eq!(identity.to_string().parse::<Identity>(), Ok(identity));
        }
    }

    #[test]
    fn parsed_port_ranges_are_canonical(text in "[0-9]{0,7}-?[0-9]{0,7}/?[a-zA-Z]{0,4}") {
        if let Ok(range) = text.parse::<PortRange>() {
            prop_assert_eq!(range.to_string().parse::<PortRange>(), Ok(range));
        }
    }
}

/// Lenient spellings are refused with the one spelling to use (issue 20):
/// they used to be read silently (`21001/TCP`, `021001/tcp`, `/08`).
#[test]
fn lenient_spellings_are_refused_with_the_canonical_form() {
    let err = |s: &str| s.parse::<PortRange>().unwrap_err();
    let e = err("21001/TCP");
    assert_eq!(
        e.to_string(),
        "protocol `TCP` in `21001/TCP` is written in lower case"
    );
    assert_eq!(e.help(), "write `21001/tcp`");
    let e = err("021001/tcp");
    assert_eq!(
        e.to_string(),
        "port `021001` in `021001/tcp` has a leading zero"
    );
    assert_eq!(e.help(), "write `21001/tcp`");
    let e = err("08000-08099/Udp");
    assert_eq!(e.help(), "write `08000-08099/udp`");
    let e = err("5432/sctp");
    assert_eq!(
        e.to_string(),
        "unknown protocol `sctp` in `5432/sctp`: protocols are tcp and udp"
    );
    let e = id_err("peer:10.0.0.0/08");
    assert_eq!(
        e.to_string(),
        "`peer:10.0.0.0/08` is not a network: prefix `/08` in `10.0.0.0/08` has a leading zero"
    );
    assert_eq!(e.help().unwrap(), "write `10.0.0.0/8`");
    assert!(
        "peer:0.0.0.0/0".parse::<Identity>().is_ok(),
        "a lone 0 is no leading zero"
    );
}
