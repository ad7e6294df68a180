use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/corosync");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

/// The value after a `Label:` line of a recorded output.
fn field(text: &str, label: &str) -> String {
    text.lines().find_map(|l| l.strip_prefix(label)).map(|v| v.trim().to_string()).unwrap()
}

/// Parses `Fri Nov 27 00:26:22 2026` back to unix seconds (the fixtures are UTC).
fn unix_of(date: &str) -> u64 {
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let f: Vec<&str> = date.split_whitespace().collect();
    let month = MONTHS.iter().position(|m| *m == f[1]).unwrap() as i64 + 1;
    let day: i64 = f[2].parse().unwrap();
    let year: i64 = f[4].parse().unwrap();
    let hms: Vec<u64> = f[3].split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (inverse of ctime's conversion).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe - 719_468) as u64;
    let unix = days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    assert_eq!(ctime(unix), date);
    unix
}

/// Builds the view a node would compute from `conf` with `up` node ids online, taking
/// Date and Ring ID from the recording, and renders it.
fn render_like(conf: &str, up: &[u32], recorded: &str) -> String {
    let c = parse(&fixture(conf)).unwrap();
    let vq = Votequorum::from_config(&c);
    let members: Vec<QuorumMember> = c
        .nodes
        .iter()
        .filter(|n| up.contains(&n.nodeid))
        .map(|n| QuorumMember {
            nodeid: n.nodeid,
            votes: n.quorum_votes,
            name: n.name.clone(),
            local: n.nodeid == 1,
        })
        .collect();
    // In every recording all nodes had been up together before some were stopped.
    let view = vq.view(members, true, unix_of(&field(recorded, "Date:")), 1, field(recorded, "Ring ID:"));
    render_quorumtool_s(&view)
}

#[test]
fn ctime_matches_the_recordings() {
    assert_eq!(ctime(0), "Thu Jan  1 00:00:00 1970");
    assert_eq!(ctime(1_795_739_182), "Fri Nov 27 00:26:22 2026");
}

#[test]
fn renders_byte_for_byte_like_corosync_quorumtool() {
    for (conf, up, recording) in [
        ("1node.conf", &[1][..], "quorumtool-s.1node.txt"),
        ("3node.conf", &[1, 2, 3][..], "quorumtool-s.3node-all-up.txt"),
        ("3node.conf", &[1, 2][..], "quorumtool-s.3node-one-down.txt"),
        ("3node.conf", &[1][..], "quorumtool-s.3node-two-down.txt"),
        ("2node-two_node.conf", &[1, 2][..], "quorumtool-s.2node-two_node-both-up.txt"),
        ("2node-two_node.conf", &[1][..], "quorumtool-s.2node-two_node-one-down.txt"),
    ] {
        let recorded = fixture(recording);
        assert_eq!(render_like(conf, up, &recorded), recorded, "{recording}");
    }
}

#[test]
fn parses_nodelist_quorum_and_totem() {
    let c = parse(&fixture("2node-two_node.conf")).unwrap();
    assert_eq!(c.nodes.len(), 2);
    assert!(c.two_node);
    assert_eq!(c.wait_for_all, None);
    let vq = Votequorum::from_config(&c);
    assert!(vq.wait_for_all, "two_node implies wait_for_all");
    // wait_for_all: not quorate until every node has been seen at once.
    assert_eq!(vq.evaluate(1, false), (1, false));
    let c = parse(&fixture("3node.conf")).unwrap();
    assert_eq!(c.cluster_name, "probe");
    assert_eq!(
        c.nodes[2],
        CorosyncNode {
            name: "node3".into(),
            nodeid: 3,
            ring0_addr: "10.77.0.3".into(),
            quorum_votes: 1,
            links: vec![CorosyncLink { link: 0, addr: "10.77.0.3".into() }],
        }
    );
    let vq = Votequorum::from_config(&c);
    assert_eq!((vq.expected_votes, vq.two_node, vq.wait_for_all), (3, false, false));
}

/// A Proxmox cluster with two corosync links (`pvecm create --link0 ... --link1 ...`):
/// every node's every link address is kept, in link order.
#[test]
fn every_link_address_is_kept() {
    let conf = "totem {\n cluster_name: pve\n interface {\n  linknumber: 0\n }\n interface {\n  linknumber: 1\n }\n}\n\
        nodelist {\n node {\n  name: pve1\n  nodeid: 1\n  quorum_votes: 1\n  ring0_addr: 10.0.0.1\n  ring1_addr: 192.168.9.1\n }\n\
         node {\n  name: pve2\n  nodeid: 2\n  ring0_addr: 10.0.0.2\n  ring1_addr: fd00::2\n }\n}\nquorum {\n provider: corosync_votequorum\n}\n";
    let c = parse(conf).unwrap();
    let links = |i: usize| c.nodes[i].links.iter().map(|l| (l.link, l.addr.as_str())).collect::<Vec<_>>();
    assert_eq!(links(0), [(0, "10.0.0.1"), (1, "192.168.9.1")]);
    assert_eq!(links(1), [(0, "10.0.0.2"), (1, "fd00::2")]);
    // A member whose Raft address is on link 0 is also dialled on link 1, same port.
    assert_eq!(link_addrs("10.0.0.2:7001", &c.nodes[1].links), ["[fd00::2]:7001"]);
    assert_eq!(link_addrs("[fd00::2]:7001", &c.nodes[1].links), ["10.0.0.2:7001"]);
}

#[test]
fn errors_name_the_line() {
    let cases = [
        ("totem {\n cluster_name: x\n}\nnodelist {\n node {\n  nodeid: abc\n  ring0_addr: 1.2.3.4\n }\n}\n", 6),
        ("totem {\n}\nnodelist {\n node {\n  ring0_addr: 1.2.3.4\n }\n", 3),
        ("totem {\n}\nnodelist {\n node {\n  nodeid: 1\n  ring0_addr: a\n }\n}\nquorum {\n two_node: maybe\n}\n", 10),
        ("totem {\n}\nthis is not valid\n", 3),
        ("totem {\n}\n}\n", 3),
    ];
    for (text, line) in cases {
        let e = parse(text).unwrap_err();
        assert_eq!(e.line, line, "{text:?}: {e}");
        assert!(e.to_string().starts_with(&format!("corosync.conf line {line}:")));
    }
}
