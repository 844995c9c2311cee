use super::*;
use crate::config::Config;

fn cfg() -> Config {
    Config {
        dicom_nodes: vec![DicomNode {
            ae_title: "FILEPACS".into(),
            host: "10.0.0.5".into(),
            port: 104,
            tls: false,
        }],
        forward: vec![rule("FILEPACS")],
        ..Config::default()
    }
}

fn rule(dest: &str) -> ForwardRule {
    ForwardRule {
        destination: dest.into(),
        on: "instance".into(),
        calling_aets: vec![],
        modalities: vec!["CT".into()],
        sop_classes: vec![],
    }
}

fn body(host: &str, port: u16, tls: bool) -> DestinationBody {
    DestinationBody {
        host: host.into(),
        port,
        tls,
    }
}

fn invalid<T: std::fmt::Debug>(r: Result<T>, needle: &str) {
    match r {
        Err(Error::Invalid(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected Invalid({needle}), got {other:?}"),
    }
}

fn conflict<T: std::fmt::Debug>(r: Result<T>, needle: &str) {
    match r {
        Err(Error::Conflict(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected Conflict({needle}), got {other:?}"),
    }
}

#[tokio::test]
async fn edits_are_validated_stored_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    let f = Forwarding::load(&cfg(), &index).unwrap();

    // Created, then replaced.
    let (created, view) = f
        .put_destination(&index, "AI", body("ai.local", 11112, false))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(view.source, Source::Api);
    let (created, _) = f
        .put_destination(&index, "AI", body("ai2.local", 11112, false))
        .await
        .unwrap();
    assert!(!created);
    assert!(f.put_rule(&index, "ai-ct", rule("AI")).await.unwrap().0);

    // The file's entries are read-only.
    conflict(
        f.put_destination(&index, "FILEPACS", body("h", 1, false))
            .await,
        "configuration file",
    );
    conflict(
        f.delete_destination(&index, "FILEPACS", true).await,
        "configuration file",
    );
    conflict(
        f.put_rule(&index, "file:1", rule("AI")).await,
        "configuration file",
    );
    conflict(f.delete_rule(&index, "file:1").await, "configuration file");

    // Invalid input is refused with the reason.
    invalid(f.put_rule(&index, "x", rule("GHOST")).await, "\"GHOST\"");
    invalid(
        f.put_destination(&index, "SEC", body("h", 2762, true))
            .await,
        "dicom_tls_ca",
    );
    invalid(
        f.put_destination(&index, "P", body("h", 0, false)).await,
        "port 0",
    );
    invalid(
        f.put_destination(&index, "P", body("", 1, false)).await,
        "host",
    );
    invalid(
        f.put_destination(&index, "P", body("a b", 1, false)).await,
        "host",
    );
    invalid(
        f.put_destination(&index, "SEVENTEEN_CHARS_X", body("h", 1, false))
            .await,
        "AE title",
    );
    invalid(
        f.put_destination(&index, "A\\B", body("h", 1, false)).await,
        "'\\'",
    );
    invalid(
        f.put_destination(&index, "rules", body("h", 1, false))
            .await,
        "another route",
    );
    invalid(f.put_rule(&index, "bad id", rule("AI")).await, "rule id");
    invalid(
        f.put_rule(&index, &"x".repeat(65), rule("AI")).await,
        "rule id",
    );
    let mut r = rule("AI");
    r.on = "hourly".into();
    invalid(f.put_rule(&index, "x", r).await, "hourly");
    let mut r = rule("AI");
    r.sop_classes = vec!["1.2/3".into()];
    invalid(f.put_rule(&index, "x", r).await, "sop_classes");
    let mut r = rule("AI");
    r.modalities = vec!["CT".into(); MAX_LIST + 1];
    invalid(f.put_rule(&index, "x", r).await, "at most 256");
    let mut r = rule("AI");
    r.calling_aets = vec!["A".repeat(65)];
    invalid(f.put_rule(&index, "x", r).await, "64 characters");
    let mut r = rule("AI");
    r.destination = "D".repeat(10_000);
    invalid(f.put_rule(&index, "x", r).await, "AE title");

    // A destination a rule names cannot go.
    conflict(f.delete_destination(&index, "AI", false).await, "ai-ct");
    assert!(matches!(
        f.delete_rule(&index, "nope").await,
        Err(Error::NotFound(_))
    ));

    // Routes: the file's rule and the API's.
    let routes = f.routes();
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[1].destination, "AI");

    // Reloaded from the index, as after a restart.
    drop(f);
    let f = Forwarding::load(&cfg(), &index).unwrap();
    let view = f.config_view();
    let dests: Vec<_> = view
        .destinations
        .iter()
        .map(|d| (d.ae_title.as_str(), d.host.as_str(), d.source))
        .collect();
    assert_eq!(
        dests,
        [
            ("FILEPACS", "10.0.0.5", Source::File),
            ("AI", "ai2.local", Source::Api)
        ]
    );
    let rules: Vec<_> = view
        .rules
        .iter()
        .map(|r| (r.id.as_str(), r.source))
        .collect();
    assert_eq!(rules, [("file:1", Source::File), ("ai-ct", Source::Api)]);

    f.delete_rule(&index, "ai-ct").await.unwrap();
    assert_eq!(f.routes().len(), 1);
    assert_eq!(f.delete_destination(&index, "AI", false).await.unwrap(), 0);
    assert!(matches!(
        f.delete_destination(&index, "AI", false).await,
        Err(Error::NotFound(_))
    ));
    assert!(index.forward_config().unwrap().destinations.is_empty());
}

#[tokio::test]
async fn a_destination_with_queued_items_needs_purge() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    let f = Forwarding::load(&Config::default(), &index).unwrap();
    f.put_destination(&index, "AI", body("h", 104, false))
        .await
        .unwrap();
    f.put_rule(
        &index,
        "all",
        ForwardRule {
            modalities: vec![],
            ..rule("AI")
        },
    )
    .await
    .unwrap();
    let record = crate::index::InstanceRecord::for_test("1.2.3", "1.2.3.1", "1.2.3.1.1");
    index
        .put_batch(&[crate::index::NewEntry::Instance(Box::new(
            crate::index::NewInstance {
                record,
                study: Default::default(),
            },
        ))])
        .unwrap();
    assert_eq!(index.forward_counts("AI").unwrap().pending, 1);
    f.delete_rule(&index, "all").await.unwrap();
    conflict(f.delete_destination(&index, "AI", false).await, "1 pending");
    assert_eq!(f.delete_destination(&index, "AI", true).await.unwrap(), 1);
    assert_eq!(index.forward_counts("AI").unwrap().pending, 0);
}

#[tokio::test]
async fn a_stored_entry_the_file_now_contradicts_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    let node = DicomNode {
        ae_title: "FILEPACS".into(),
        host: "old".into(),
        port: 1,
        tls: false,
    };
    index
        .forward_config_put_destination("FILEPACS", &node)
        .unwrap();
    index.forward_config_put_rule("r", &rule("GONE")).unwrap();
    let f = Forwarding::load(&cfg(), &index).unwrap();
    let view = f.config_view();
    assert_eq!(view.destinations.len(), 1);
    assert_eq!(view.destinations[0].host, "10.0.0.5");
    assert_eq!(view.rules.len(), 1);
    // The rule left out can still be deleted.
    f.delete_rule(&index, "r").await.unwrap();
    assert!(index.forward_config().unwrap().rules.is_empty());
}
