//! The duration grammar and bounds.
use super::*;

#[test]
fn ttls() {
    assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
    assert_eq!(parse_ttl("1h 30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_ttl("366d").unwrap(), MAX_TTL);
    let e = parse_ttl("367d").unwrap_err();
    assert!(matches!(e, DurationError::TooLong { .. }), "{e}");
    assert_eq!(
        e.message(),
        "TTL `367d` is longer than the maximum of 366 days"
    );
    assert!(e.help().contains("366d"), "{}", e.help());
    assert!(matches!(parse_ttl("30"), Err(DurationError::Parse { .. })));
    assert!(parse_ttl("soon").unwrap_err().to_string().contains("soon"));
}

#[test]
fn intervals_are_one_second_to_one_day() {
    assert_eq!(
        "1s".parse::<Interval>().unwrap().get(),
        Duration::from_secs(1)
    );
    assert_eq!(
        "1d".parse::<Interval>().unwrap().get(),
        Duration::from_secs(86_400)
    );
    // Below a second cannot be written at all.
    let short = "500ms".parse::<Interval>().unwrap_err();
    assert!(matches!(short, DurationError::Parse { .. }), "{short}");
    let short = Interval::new(Duration::from_millis(500)).unwrap_err();
    assert!(matches!(short, DurationError::TooShort { .. }), "{short}");
    assert_eq!(short.reason(), "is out of range: at least 1s");
    let long = "2d".parse::<Interval>().unwrap_err();
    assert_eq!(
        long.message(),
        "interval `2d` is longer than the maximum of 1d"
    );
    assert!(matches!(
        "0s".parse::<Interval>(),
        Err(DurationError::TooShort { .. })
    ));
}

#[test]
fn text_round_trips_and_serde_is_the_text() {
    let t: Ttl = "1h 30m".parse().unwrap();
    assert_eq!(t.to_string(), "1h 30m");
    assert_eq!(t.to_string().parse::<Ttl>().unwrap(), t);
    assert_eq!(serde_json::to_string(&t).unwrap(), "\"1h 30m\"");
    let back: Ttl = serde_json::from_str("\"90m\"").unwrap();
    assert_eq!(back.get(), Duration::from_secs(5400));
    let e = serde_json::from_str::<Ttl>("\"0s\"").unwrap_err();
    assert!(e.to_string().contains("greater than zero"), "{e}");
    assert!(serde_json::from_str::<Ttl>("30").is_err());
}

#[test]
fn new_checks_the_bounds_too() {
    assert!(Ttl::new(Duration::ZERO).is_err());
    assert!(Ttl::new(MAX_TTL + Duration::from_secs(1)).is_err());
    assert_eq!(
        Interval::new(Duration::from_secs(60)).unwrap().get(),
        Duration::from_secs(60)
    );
}

/// The grammar's refusals, each with what is wrong (the hint follows).
#[test]
fn the_grammar_refuses_with_a_reason_and_the_hint() {
    for (text, why) in [
        ("", "it is empty"),
        ("10", "`10` has no unit (`10s`, `10m`, `10h` or `10d`?)"),
        (
            "10M",
            "`M` is not a unit (months? minutes are `10m`, days `d`)",
        ),
        (
            "1ns",
            "`ns` is shorter than a second; the smallest unit is `s`",
        ),
        (
            "500ms",
            "`ms` is shorter than a second; the smallest unit is `s`",
        ),
        ("-5m", "it is negative"),
        ("+5m", "a sign is not part of a duration"),
        (
            "1.5h",
            "it has a fraction; use a smaller unit (`90m`, not `1.5h`)",
        ),
        ("1h1h", "`h` is given twice (write each unit once)"),
        (
            "30m1h",
            "`h` comes after a smaller unit (largest first: `1h30m`, not `30m1h`)",
        ),
        (
            "10 minutes",
            "`minutes` is a word; units are single letters (`10m`)",
        ),
        (
            "1 hour",
            "`hour` is a word; units are single letters (`1h`)",
        ),
        (
            "10 m",
            "a space between a number and its unit (write `10m`)",
        ),
        ("2w", "`w` is not a unit; the largest is `d` (`14d`)"),
        ("1y", "`y` is not a unit; the largest is `d` (`365d`)"),
        ("10H", "`H` is a word; units are single letters (`10h`)"),
        ("010m", "`010m` has a leading zero (write `10m`)"),
        ("m", "a number must come before the unit"),
        ("soon", "a number must come before the unit"),
        ("5x", "`x` is not a unit"),
        ("5m\u{1b}[2J", "`\\u{1b}[2J` is not a unit"),
        ("99999999999999999999s", "it is too large"),
        ("999999999999999d", "it is too large"),
    ] {
        let e = parse_ttl(text).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "`{}` is not a duration: {why}; {HINT}",
                crate::termtext::escape(text)
            ),
            "{text:?}"
        );
        assert!(!e.to_string().contains('\u{1b}'));
    }
}

#[test]
fn the_grammar_reads_each_unit_largest_first_with_or_without_spaces() {
    for (text, secs) in [
        ("90s", 90),
        ("15m", 900),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("2d", 172_800),
        ("1d2h3m4s", 93_784),
        ("1d 2h 3m 4s", 93_784),
        ("1d4s", 86_404),
        ("0s", 0),
    ] {
        assert_eq!(
            grammar::parse(text).unwrap(),
            Duration::from_secs(secs),
            "{text}"
        );
    }
}

#[test]
fn what_is_displayed_reads_back() {
    for secs in [
        1,
        59,
        60,
        61,
        3_599,
        3_600,
        5_400,
        86_399,
        86_400,
        93_784,
        366 * 86_400,
    ] {
        let d = Duration::from_secs(secs);
        for sep in ["", " "] {
            let text = format(d, sep);
            assert_eq!(grammar::parse(&text).unwrap(), d, "{text}");
        }
    }
    assert_eq!(format(Duration::from_secs(93_784), ""), "1d2h3m4s");
    assert_eq!(format(Duration::from_millis(1_500), " "), "1s");
    assert_eq!(format(Duration::ZERO, ""), "0s");
    assert_eq!(Ttl::new(MAX_TTL).unwrap().to_string(), "366d");
}

#[test]
fn bound_errors_carry_a_hint_too() {
    assert_eq!(
        parse_ttl("0s").unwrap_err().to_string(),
        format!("TTL must be greater than zero; {HINT}")
    );
    assert_eq!(
        "2d".parse::<Interval>().unwrap_err().to_string(),
        "interval `2d` is longer than the maximum of 1d; use at most `1d`"
    );
}
