//! The control socket: requests against a running manager, the socket's
//! permissions, stale sockets, line limits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

#[test]
fn requests_parse_and_refuse_unknown_fields() {
    let r: Request = serde_json::from_str(
        r#"{"op":"add","group":"g","members":[{"id":"d-1","role":"sender"}]}"#,
    )
    .unwrap();
    assert_eq!(
        r,
        Request::Add {
            group: "g".into(),
            members: vec![MemberSpec {
                id: "d-1".into(),
                role: RoleName::Sender
            }]
        }
    );
    let r: Request = serde_json::from_str(r#"{"op":"create","group":"g"}"#).unwrap();
    assert_eq!(
        r,
        Request::Create {
            group: "g".into(),
            scheme: None,
            alg: None
        }
    );
    let r: Request =
        serde_json::from_str(r#"{"op":"create","group":"g","scheme":"p2p","alg":"A256GCM"}"#)
            .unwrap();
    assert!(matches!(
        r,
        Request::Create {
            scheme: Some(SchemeName::P2p),
            alg: Some(AlgName::A256Gcm),
            ..
        }
    ));
    assert_eq!(
        serde_json::from_str::<Request>(r#"{"op":"list"}"#).unwrap(),
        Request::List {}
    );
    for bad in [
        r#"{"op":"list","extra":1}"#,
        r#"{"op":"drop-tables"}"#,
        r#"{"op":"evict","group":"g"}"#,
        r#"{"op":"add","group":"g","members":[{"id":"d","role":"admin"}]}"#,
        r#"{"op":"enrol","entities":[{"public_key":"00","kind":"robot"}]}"#,
        r#"{"list":true}"#,
        "",
    ] {
        assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
    }
}

#[test]
fn hex_roundtrip_and_errors() {
    assert_eq!(
        unhex(&hex(&[0, 1, 0xab, 0xff])).unwrap(),
        vec![0, 1, 0xab, 0xff]
    );
    assert_eq!(unhex("ABcd").unwrap(), vec![0xab, 0xcd]);
    assert!(unhex("abc").is_err());
    assert!(unhex("zz").is_err());
    assert_eq!(show_group(&GroupId::new(b"fire").unwrap()), "fire");
    assert_eq!(show_group(&GroupId::new([0xff, 0]).unwrap()), "0xff00");
}

#[tokio::test]
async fn lines_are_bounded() {
    let mut input: Vec<u8> = b"{\"op\":\"list\"}\n\nlast".to_vec();
    let mut r = BufReader::with_capacity(7, &input[..]);
    let mut buf = Vec::new();
    assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), LineRead::Line);
    assert_eq!(buf, b"{\"op\":\"list\"}");
    assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), LineRead::Line);
    assert!(buf.is_empty());
    assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), LineRead::Line);
    assert_eq!(buf, b"last");
    assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), LineRead::Eof);

    // Exactly MAX_LINE is fine; one more byte is refused without
    // buffering the rest.
    input = vec![b'x'; MAX_LINE];
    input.push(b'\n');
    let mut r = BufReader::new(&input[..]);
    assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), LineRead::Line);
    assert_eq!(buf.len(), MAX_LINE);
    input = vec![b'x'; 4 * MAX_LINE];
    let mut r = BufReader::new(&input[..]);
    assert_eq!(
        read_line(&mut r, &mut buf).await.unwrap(),
        LineRead::TooLong
    );
    assert!(buf.capacity() <= 2 * MAX_LINE);
}

#[test]
fn socket_is_private_and_stale_sockets_are_handled() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    let path = dir.join(SOCKET_NAME);

    let (listener, owner) = bind_private(&path).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), owner);
    // No staging directory is left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    // Someone answers: a second manager refuses to start and leaves
    // the socket alone.
    let err = bind_private(&path).unwrap_err().to_string();
    assert!(err.contains("another manager answers"), "{err}");
    assert!(path.exists());

    // The first one is gone (socket file left behind): removed, rebound.
    drop(listener);
    let (_again, _) = bind_private(&path).unwrap();
    assert_eq!(
        std::fs::symlink_metadata(&path).unwrap().mode() & 0o777,
        0o600
    );

    // Not a socket: never removed.
    let file = dir.join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(
        bind_private(&file)
            .unwrap_err()
            .to_string()
            .contains("not a socket")
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    // A directory others may write to is refused.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = bind_private(&open.join(SOCKET_NAME))
        .unwrap_err()
        .to_string();
    assert!(err.contains("writable by group or others"), "{err}");
    assert!(!open.join(SOCKET_NAME).exists());
}

#[test]
fn the_administration_policy_knows_users_by_name_and_uid() {
    use sealcast_group::acp::{AccessPolicy, AccessRule, Effect};
    let passwd = "root:x:0:0:root:/root:/bin/bash\n# a comment\n\nalice:x:1001:1001::/home/alice:/bin/sh\nbroken\n";
    let policy = AccessPolicy::new(vec![AccessRule {
        effect: Effect::Permit,
        originators: vec!["alice".into()],
        operations: vec!["evict".into()],
        groups: vec![GroupId::new(b"doors").unwrap()],
        hours: None,
    }])
    .unwrap();
    let access = AdminAccess::new(policy, passwd);
    assert_eq!(access.names_of(1001), vec!["alice", "uid:1001"]);
    assert_eq!(access.names_of(7), vec!["uid:7"]);
    let at = sealcast_core::ids::UnixMillis::new(0);
    let evict = |group: &str| Request::Evict {
        group: group.into(),
        member: "door-1".into(),
    };
    assert!(
        access
            .decide(&access.names_of(1001), &evict("doors"), at)
            .is_ok()
    );
    let err = access
        .decide(&access.names_of(1001), &evict("lights"), at)
        .unwrap_err();
    assert!(
        err.contains("alice / uid:1001") && err.contains("evict in group lights"),
        "{err}"
    );
    assert!(
        access
            .decide(&access.names_of(0), &evict("doors"), at)
            .is_err()
    );
    assert!(
        access
            .decide(&access.names_of(1001), &Request::List {}, at)
            .is_err()
    );
    assert_eq!(admin_operation(&Request::Statuses {}), ("statuses", None));
}
