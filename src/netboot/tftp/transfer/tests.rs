//! Unit tests of the transfer state machine.

use super::*;

fn rrq(opts: &[(&str, &str)]) -> Request {
    Request {
        filename: "f".into(),
        mode: Mode::Octet,
        options: opts
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    }
}

fn blocks(out: &[Outgoing]) -> Vec<u16> {
    out.iter()
        .map(|o| match o {
            Outgoing::Data { block, .. } => *block,
            Outgoing::Packet(p) => panic!("unexpected packet {:?}", Packet::parse(p)),
        })
        .collect()
}

fn ack(b: u16) -> Packet<'static> {
    Packet::Ack { block: b }
}

#[test]
fn plain_rfc1350_lock_step_with_exact_multiple_sends_empty_last_block() {
    let now = Instant::now();
    let (mut t, out) = Transfer::start(&rrq(&[]), 1024, &Limits::default(), now);
    assert_eq!(
        out,
        vec![Outgoing::Data {
            block: 1,
            range: 0..512
        }]
    );
    let out = t.on_packet(&ack(1), now);
    assert_eq!(
        out,
        vec![Outgoing::Data {
            block: 2,
            range: 512..1024
        }]
    );
    let out = t.on_packet(&ack(2), now);
    assert_eq!(
        out,
        vec![Outgoing::Data {
            block: 3,
            range: 1024..1024
        }]
    );
    assert!(t.on_packet(&ack(3), now).is_empty());
    assert_eq!(t.phase(), Phase::Done);
}

#[test]
fn options_are_negotiated_and_clamped() {
    let l = Limits::default();
    let n = negotiate(
        &rrq(&[
            ("blksize", "100000"),
            ("tsize", "0"),
            ("timeout", "3"),
            ("windowsize", "1000"),
            ("multicast", ""),
        ]),
        4242,
        &l,
    );
    assert_eq!(n.blksize, 65464);
    assert_eq!(n.windowsize, 256);
    assert_eq!(n.timeout, Duration::from_secs(3));
    assert_eq!(
        n.oack,
        vec![
            ("blksize".into(), "65464".into()),
            ("tsize".into(), "4242".into()),
            ("timeout".into(), "3".into()),
            ("windowsize".into(), "256".into()),
        ]
    );
    // Invalid values are left out, not refused.
    let n = negotiate(
        &rrq(&[("blksize", "7"), ("timeout", "0"), ("windowsize", "x")]),
        1,
        &l,
    );
    assert!(n.oack.is_empty());
    assert_eq!(n.blksize, 512);
}

#[test]
fn oack_then_ack0_then_windows() {
    let now = Instant::now();
    let (mut t, out) = Transfer::start(
        &rrq(&[("blksize", "1000"), ("windowsize", "4"), ("tsize", "0")]),
        9500,
        &Limits::default(),
        now,
    );
    let Outgoing::Packet(p) = &out[0] else {
        panic!()
    };
    assert_eq!(
        Packet::parse(p).unwrap(),
        Packet::Oack {
            options: vec![
                ("blksize".into(), "1000".into()),
                ("windowsize".into(), "4".into()),
                ("tsize".into(), "9500".into())
            ]
        }
    );
    assert_eq!(t.phase(), Phase::Negotiating);
    // A stray ACK 1 before ACK 0 is ignored.
    assert!(t.on_packet(&ack(1), now).is_empty());
    assert_eq!(blocks(&t.on_packet(&ack(0), now)), vec![1, 2, 3, 4]);
    assert_eq!(blocks(&t.on_packet(&ack(4), now)), vec![5, 6, 7, 8]);
    // 9500 bytes = 9 full blocks + 500 bytes: blocks 9 and 10.
    let out = t.on_packet(&ack(8), now);
    assert_eq!(
        out,
        vec![
            Outgoing::Data {
                block: 9,
                range: 8000..9000
            },
            Outgoing::Data {
                block: 10,
                range: 9000..9500
            }
        ]
    );
    assert!(t.on_packet(&ack(10), now).is_empty());
    assert_eq!(t.phase(), Phase::Done);
    assert_eq!(t.bytes_acked(), 9500);
}

#[test]
fn partial_window_ack_resends_from_the_gap() {
    let now = Instant::now();
    let (mut t, _) = Transfer::start(
        &rrq(&[("windowsize", "4")]),
        100_000,
        &Limits::default(),
        now,
    );
    assert_eq!(blocks(&t.on_packet(&ack(0), now)), vec![1, 2, 3, 4]);
    // Client got 1 and 2, lost 3: ACK 2 → resend 3.. up to a window past 2.
    assert_eq!(blocks(&t.on_packet(&ack(2), now)), vec![3, 4, 5, 6]);
    assert_eq!(t.retransmits, 2);
}

#[test]
fn duplicate_acks_are_never_answered() {
    let now = Instant::now();
    let (mut t, _) = Transfer::start(&rrq(&[]), 5000, &Limits::default(), now);
    assert_eq!(blocks(&t.on_packet(&ack(1), now)), vec![2]);
    // The client's retransmitted ACK 1 must not trigger a second block 2 (Sorcerer's Apprentice).
    assert!(t.on_packet(&ack(1), now).is_empty());
    assert!(t.on_packet(&ack(0), now).is_empty());
    assert!(t.on_packet(&ack(9), now).is_empty());
    assert_eq!(blocks(&t.on_packet(&ack(2), now)), vec![3]);
}

#[test]
fn timeout_retransmits_with_backoff_then_gives_up() {
    let t0 = Instant::now();
    let limits = Limits::default();
    let (mut t, _) = Transfer::start(&rrq(&[("windowsize", "2")]), 10_000, &limits, t0);
    // OACK lost: nothing before the deadline, then the OACK again with a doubled timeout.
    assert!(t.on_timeout(t0 + Duration::from_millis(999)).is_empty());
    let out = t.on_timeout(t0 + Duration::from_secs(1));
    assert!(
        matches!(&out[..], [Outgoing::Packet(p)] if matches!(Packet::parse(p), Ok(Packet::Oack{..})))
    );
    assert_eq!(t.deadline(), t0 + Duration::from_secs(3));
    let mut now = t0 + Duration::from_secs(3);
    assert_eq!(blocks(&t.on_packet(&ack(0), now)), vec![1, 2]);
    // ACK resets the timeout to the base.
    assert_eq!(t.deadline(), now + Duration::from_secs(1));
    let mut waits = Vec::new();
    for _ in 0..limits.max_retries {
        now = t.deadline();
        assert_eq!(blocks(&t.on_timeout(now)), vec![1, 2], "go-back-N resend");
        waits.push((t.deadline() - now).as_secs());
    }
    assert_eq!(waits, vec![2, 4, 8, 8, 8]);
    let out = t.on_timeout(t.deadline());
    assert!(
        matches!(&out[..], [Outgoing::Packet(p)] if matches!(Packet::parse(p), Ok(Packet::Error{..})))
    );
    assert_eq!(t.phase(), Phase::Failed);
    assert_eq!(t.failure(), Some(&Failure::TimedOut));
    assert!(t.on_packet(&ack(2), now).is_empty());
}

#[test]
fn a_client_timeout_above_the_clamp_is_declined_and_the_default_applies() {
    let t0 = Instant::now();
    let limits = Limits::default();
    let (t, out) = Transfer::start(
        &rrq(&[("timeout", "255"), ("blksize", "1468")]),
        10_000,
        &limits,
        t0,
    );
    assert!(t.timeout_clamped);
    assert_eq!(t.deadline(), t0 + limits.default_timeout);
    match &out[..] {
        [Outgoing::Packet(p)] => assert_eq!(
            Packet::parse(p).unwrap(),
            Packet::Oack {
                options: vec![("blksize".into(), "1468".into())]
            }
        ),
        o => panic!("{o:?}"),
    }
    let (t, _) = Transfer::start(&rrq(&[("timeout", "5")]), 1, &limits, t0);
    assert!(!t.timeout_clamped);
    assert_eq!(t.deadline(), t0 + Duration::from_secs(5));
}

#[test]
fn a_transfer_ends_at_its_lifetime_however_often_the_client_acknowledges() {
    let t0 = Instant::now();
    let limits = Limits {
        lifetime: Duration::from_secs(30),
        ..Limits::default()
    };
    let (mut t, _) = Transfer::start(&rrq(&[("blksize", "8")]), 1_000_000, &limits, t0);
    assert!(!t.acknowledged());
    let mut now = t0;
    assert_eq!(blocks(&t.on_packet(&ack(0), now)), vec![1]);
    assert!(t.acknowledged());
    // One ACK every 900 ms keeps every retransmission timer happy, but not the lifetime.
    for b in 1..=33u16 {
        now += Duration::from_millis(900);
        assert_eq!(blocks(&t.on_packet(&ack(b), now)), vec![b + 1], "{b}");
    }
    assert!(t.deadline() <= t0 + Duration::from_secs(30));
    now += Duration::from_millis(900);
    let out = t.on_packet(&ack(34), now);
    assert!(
        matches!(&out[..], [Outgoing::Packet(p)] if matches!(Packet::parse(p), Ok(Packet::Error{..})))
    );
    assert_eq!(t.failure(), Some(&Failure::Lifetime));
    // A silent client: the timer fires at the lifetime at the latest.
    let (mut t, _) = Transfer::start(&rrq(&[]), 100, &limits, t0);
    assert!(t.on_timeout(t0 + Duration::from_secs(29)).len() == 1);
    assert_eq!(t.phase(), Phase::Sending);
    assert!(t.deadline() <= t0 + Duration::from_secs(30));
    t.on_timeout(t0 + Duration::from_secs(30));
    assert_eq!(t.failure(), Some(&Failure::Lifetime));
}

#[test]
fn negotiated_timeout_is_the_base() {
    let t0 = Instant::now();
    let (t, _) = Transfer::start(&rrq(&[("timeout", "5")]), 1, &Limits::default(), t0);
    assert_eq!(t.deadline(), t0 + Duration::from_secs(5));
}

#[test]
fn block_numbers_wrap_after_65535() {
    let now = Instant::now();
    let size = 70_000u64 * 8;
    let (mut t, _) = Transfer::start(&rrq(&[("blksize", "8")]), size, &Limits::default(), now);
    t.on_packet(&ack(0), now);
    for abs in 1..=70_001u64 {
        let expect_next = abs + 1;
        let out = t.on_packet(&ack((abs & 0xffff) as u16), now);
        if abs == 70_001 {
            assert!(out.is_empty());
            break;
        }
        match &out[..] {
            [Outgoing::Data { block, range }] => {
                assert_eq!(*block, (expect_next & 0xffff) as u16);
                assert_eq!(range.start, (expect_next - 1) * 8);
            }
            o => panic!("{o:?}"),
        }
    }
    assert_eq!(t.phase(), Phase::Done);
}

#[test]
fn client_error_and_illegal_packets_end_the_transfer() {
    let now = Instant::now();
    let (mut t, _) = Transfer::start(&rrq(&[("blksize", "1024")]), 10, &Limits::default(), now);
    assert!(
        t.on_packet(
            &Packet::Error {
                code: 8,
                message: "no".into()
            },
            now
        )
        .is_empty()
    );
    assert!(matches!(
        t.failure(),
        Some(Failure::ClientError { code: 8, .. })
    ));
    let (mut t, _) = Transfer::start(&rrq(&[]), 10, &Limits::default(), now);
    let out = t.on_packet(
        &Packet::Data {
            block: 1,
            data: b"x",
        },
        now,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(t.phase(), Phase::Failed);
}

#[test]
fn netascii_is_refused() {
    let mut r = rrq(&[]);
    r.mode = Mode::NetAscii;
    let (t, out) = Transfer::start(&r, 10, &Limits::default(), Instant::now());
    assert_eq!(t.phase(), Phase::Failed);
    assert!(matches!(&out[..], [Outgoing::Packet(_)]));
}

#[test]
fn empty_file_is_one_empty_block() {
    let now = Instant::now();
    let (mut t, out) = Transfer::start(&rrq(&[]), 0, &Limits::default(), now);
    assert_eq!(
        out,
        vec![Outgoing::Data {
            block: 1,
            range: 0..0
        }]
    );
    t.on_packet(&ack(1), now);
    assert_eq!(t.phase(), Phase::Done);
}
