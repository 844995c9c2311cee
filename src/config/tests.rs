use super::*;

#[test]
fn example_config_parses_and_matches_defaults_where_silent() {
    let cfg: Config = toml::from_str(include_str!("../../docs/gateway.example.toml")).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.ae_title, "DICOMGW");
}

#[test]
fn flags_beat_file_and_file_beats_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(&file, "ae_title = \"FROMFILE\"\nmax_associations = 7\n").unwrap();
    let over = Overrides {
        config: Some(file),
        ae_title: Some("FROMFLAG".into()),
        ..Default::default()
    };
    let cfg = Config::load(&over, &SecretEnv::default()).unwrap();
    assert_eq!(cfg.ae_title, "FROMFLAG");
    assert_eq!(cfg.max_associations, 7);
    assert_eq!(cfg.read_timeout, 60);
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
    let over = Overrides {
        max_pdu_length: Some(1000),
        ..Default::default()
    };
    let err = Config::load(&over, &SecretEnv::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_pdu_length"), "{err}");
}

#[test]
fn a_blank_or_short_api_token_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, " \n\t\n").unwrap();
    let over = Overrides {
        api_token_file: Some(file.clone()),
        ..Default::default()
    };
    let err = Config::load(&over, &SecretEnv::default()).unwrap_err();
    assert!(err.to_string().contains("api_token"), "{err}");
    for token in ["", "   ", "short-token"] {
        let env = SecretEnv {
            api_token: Some(token.into()),
            ..Default::default()
        };
        let err = Config::load(&Overrides::default(), &env).unwrap_err();
        assert!(err.to_string().contains("api_token"), "{token:?}: {err}");
    }
    std::fs::write(&file, "a-token-of-24-characters\n").unwrap();
    let cfg = Config::load(&over, &SecretEnv::default()).unwrap();
    assert_eq!(cfg.api_token.unwrap().expose(), "a-token-of-24-characters");
}

#[test]
fn token_is_redacted_everywhere() {
    let env = SecretEnv {
        api_token: Some("hunter2-token-long-enough".into()),
        metrics_token: Some("hunter2-metrics-scraper".into()),
        avara_webhook_key: Some("whsec_aHVudGVyMi13ZWJob29rLWtleQ==".into()),
        aws_access_key_id: Some("AKIDVISIBLE".into()),
        aws_secret_access_key: Some("hunter2-aws".into()),
        aws_session_token: Some("hunter2-sts".into()),
    };
    let over = Overrides {
        storage_url: Some("s3://dicom/site-a".into()),
        ..Default::default()
    };
    let cfg = Config::load(&over, &env).unwrap();
    assert_eq!(cfg.webhook_keys.len(), 1);
    assert_eq!(
        cfg.storage_location().unwrap(),
        StorageLocation::S3 {
            bucket: "dicom".into(),
            prefix: "site-a".into()
        }
    );
    assert!(!format!("{cfg:?}").contains("hunter2"));
    let printed = cfg.to_redacted_toml();
    assert!(!printed.contains("hunter2"));
    assert!(!printed.contains("aHVudGVy"));
    assert!(printed.contains("<redacted>"));
    assert!(printed.contains("AKIDVISIBLE"), "{printed}");
}

#[test]
fn storage_urls_are_checked() {
    let load = |url: &str| {
        let over = Overrides {
            storage_url: Some(url.into()),
            ..Default::default()
        };
        Config::load(&over, &SecretEnv::default())
    };
    assert_eq!(
        load("file:///srv/dicom")
            .unwrap()
            .storage_location()
            .unwrap(),
        StorageLocation::Local("/srv/dicom".into())
    );
    for bad in ["file://relative", "s3://UPPER", "ftp://x", "/srv/dicom"] {
        let err = load(bad).unwrap_err().to_string();
        assert!(err.contains("storage.url"), "{bad}: {err}");
    }
}

#[test]
fn metrics_token_is_checked_like_the_api_token() {
    for token in ["", "  ", "short"] {
        let env = SecretEnv {
            metrics_token: Some(token.into()),
            ..Default::default()
        };
        let err = Config::load(&Overrides::default(), &env).unwrap_err();
        assert!(
            err.to_string().contains("metrics_token"),
            "{token:?}: {err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics-token");
    std::fs::write(&file, "scraper-token-of-24-chars\n").unwrap();
    let over = Overrides {
        metrics_token_file: Some(file),
        ..Default::default()
    };
    let env = SecretEnv {
        metrics_token: Some("scraper-token-from-the-env".into()),
        ..Default::default()
    };
    let err = Config::load(&over, &env).unwrap_err().to_string();
    assert!(err.contains("not both"), "{err}");
    let cfg = Config::load(&over, &SecretEnv::default()).unwrap();
    assert_eq!(
        cfg.metrics_token.as_ref().unwrap().expose(),
        "scraper-token-of-24-chars"
    );
    assert!(!cfg.to_redacted_toml().contains("scraper-token"));
}

#[test]
fn log_format_comes_from_file_env_or_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, "log_format = \"json\"\n").unwrap();
    let over = Overrides {
        config: Some(file),
        ..Default::default()
    };
    let cfg = Config::load(&over, &SecretEnv::default()).unwrap();
    assert_eq!(cfg.log_format, LogFormat::Json);
    assert_eq!(
        Config::load(&Overrides::default(), &SecretEnv::default())
            .unwrap()
            .log_format,
        LogFormat::Text
    );
    let over = Overrides {
        log_format: Some(LogFormat::Text),
        ..over
    };
    assert_eq!(
        Config::load(&over, &SecretEnv::default())
            .unwrap()
            .log_format,
        LogFormat::Text
    );
}

#[test]
fn an_empty_list_variable_means_not_set() {
    let over = Overrides {
        allowed_calling_aets: Some(vec![String::new()]),
        cors_origins: Some(vec![" ".into(), "https://a.example".into(), String::new()]),
        webhook_retry_schedule: Some(vec![String::new()]),
        ..Overrides::default()
    };
    let cfg = Config::load(&over, &SecretEnv::default()).unwrap();
    assert!(
        cfg.allowed_calling_aets.is_empty(),
        "any AE, not one empty AE"
    );
    assert_eq!(cfg.cors_origins, vec!["https://a.example".to_owned()]);
    assert_eq!(
        cfg.webhook_retry_schedule,
        Config::default().webhook_retry_schedule
    );
}

#[test]
fn hostile_webhook_settings_are_refused_naming_the_setting() {
    let refused = |over: Overrides| match Config::load(&over, &SecretEnv::default()) {
        Err(Error::Invalid { name, reason }) => (name, reason),
        other => panic!("accepted: {other:?}"),
    };
    let schedule = |items: Vec<&str>| Overrides {
        webhook_retry_schedule: Some(items.into_iter().map(str::to_owned).collect()),
        ..Overrides::default()
    };
    let (name, reason) = refused(schedule(vec!["1s"; 33]));
    assert_eq!(name, "webhook_retry_schedule");
    assert!(reason.contains("33 entries"), "{reason}");
    let (_, reason) = refused(schedule(vec!["0s", "8days"]));
    assert!(reason.contains("longer than a week"), "{reason}");
    let (_, reason) = refused(schedule(vec!["soon"]));
    assert!(reason.contains("not a duration"), "{reason}");
    let (_, reason) = refused(schedule(vec!["99999999999999999999999h"]));
    assert!(reason.contains("not a duration"), "{reason}");
    for (over, setting) in [
        (
            Overrides {
                webhook_timeout: Some(301),
                ..Overrides::default()
            },
            "webhook_timeout",
        ),
        (
            Overrides {
                webhook_timeout: Some(0),
                ..Overrides::default()
            },
            "webhook_timeout",
        ),
        (
            Overrides {
                stable_after: Some(0),
                ..Overrides::default()
            },
            "stable_after",
        ),
        (
            Overrides {
                webhook_concurrency: Some(0),
                ..Overrides::default()
            },
            "webhook_concurrency",
        ),
    ] {
        assert_eq!(refused(over).0, setting);
    }
}

#[test]
fn storage_ack_and_backlog_bounds_come_from_file_env_or_flag() {
    let s3 = |more: Overrides| Overrides {
        storage_url: Some("s3://dicom/site".into()),
        ..more
    };
    let cfg = Config::load(&s3(Overrides::default()), &SecretEnv::default()).unwrap();
    assert_eq!(cfg.storage.ack, AckMode::Journal, "journal is the default");
    assert_eq!(cfg.upload_backlog(), Some((2 << 30, 8 << 30)));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(
        &file,
        "[storage]\nack = \"stored\"\nbacklog_wait = 1000\nbacklog_max = 5000\n",
    )
    .unwrap();
    let from_file = s3(Overrides {
        config: Some(file),
        ..Overrides::default()
    });
    let cfg = Config::load(&from_file, &SecretEnv::default()).unwrap();
    assert_eq!(cfg.storage.ack, AckMode::Stored);
    assert_eq!(
        (cfg.storage.backlog_wait, cfg.storage.backlog_max),
        (1000, 5000)
    );
    assert_eq!(cfg.upload_backlog(), None, "stored: no backlog");
    // Flags (and their variables) win over the file.
    let flags = Overrides {
        storage_ack: Some(AckMode::Journal),
        storage_backlog_wait: Some(10),
        storage_backlog_max: Some(20),
        ..from_file
    };
    let cfg = Config::load(&flags, &SecretEnv::default()).unwrap();
    assert_eq!(cfg.upload_backlog(), Some((10, 20)));
    assert!(cfg.to_redacted_toml().contains("ack = \"journal\""));
    // A local store has no backlog, whatever the settings say.
    let cfg = Config::load(&Overrides::default(), &SecretEnv::default()).unwrap();
    assert_eq!(cfg.upload_backlog(), None);
}

#[test]
fn storage_cache_objects_is_off_by_default_and_comes_from_file_or_flag() {
    let cfg = Config::load(&Overrides::default(), &SecretEnv::default()).unwrap();
    assert!(
        !cfg.storage.cache_objects,
        "dropped from the page cache by default"
    );
    let file = "[storage]\ncache_objects = true\n";
    let cfg = load_toml(file).unwrap();
    assert!(cfg.storage.cache_objects);
    assert!(cfg.to_redacted_toml().contains("cache_objects = true"));
    let flag = Overrides {
        storage_cache_objects: Some(false),
        ..Overrides::default()
    };
    let cfg = load_toml_with(file, flag).unwrap();
    assert!(!cfg.storage.cache_objects, "the flag wins over the file");
    let err = load_toml("[storage]\ncache_objects = \"yes\"\n").unwrap_err();
    assert!(err.to_string().contains("cache_objects"), "{err}");
}

#[test]
fn bad_backlog_bounds_are_refused_naming_the_setting_for_s3_only() {
    let load = |url: &str, wait: u64, max: u64| {
        let over = Overrides {
            storage_url: Some(url.into()),
            storage_backlog_wait: Some(wait),
            storage_backlog_max: Some(max),
            ..Overrides::default()
        };
        Config::load(&over, &SecretEnv::default())
    };
    for (wait, max, setting) in [
        (0, 10, "storage.backlog_wait"),
        (10, 0, "storage.backlog_max"),
        (11, 10, "storage.backlog_wait"),
        (u64::MAX, 1, "storage.backlog_wait"),
    ] {
        match load("s3://dicom/site", wait, max) {
            Err(Error::Invalid { name, reason }) => {
                assert_eq!(name, setting, "{wait}/{max}: {reason}")
            }
            other => panic!("{wait}/{max} accepted: {other:?}"),
        }
        // Meaningless for a local store: accepted, ignored.
        let cfg = load("file:///srv/dicom", wait, max).unwrap();
        assert_eq!(cfg.upload_backlog(), None);
    }
    assert!(
        load("s3://dicom/site", 10, 10).is_ok(),
        "wait = max is fine"
    );
    assert!(toml::from_str::<Config>("[storage]\nack = \"later\"\n").is_err());
}

#[test]
fn bad_journal_settings_are_refused_naming_the_setting() {
    let load = |over: Overrides| Config::load(&over, &SecretEnv::default());
    let cases = [
        (
            Overrides {
                journal_inline_max_kib: Some(4097),
                ..Overrides::default()
            },
            "journal.inline_max_kib",
        ),
        (
            Overrides {
                journal_inline_max_kib: Some(u64::MAX),
                ..Overrides::default()
            },
            "journal.inline_max_kib",
        ),
        (
            Overrides {
                journal_segment_size_mib: Some(0),
                ..Overrides::default()
            },
            "journal.segment_size_mib",
        ),
        (
            Overrides {
                journal_segment_size_mib: Some(u64::MAX),
                ..Overrides::default()
            },
            "journal.segment_size_mib",
        ),
        (
            Overrides {
                journal_segments: Some(1),
                ..Overrides::default()
            },
            "journal.segments",
        ),
        (
            Overrides {
                journal_segments: Some(u64::MAX),
                ..Overrides::default()
            },
            "journal.segments",
        ),
    ];
    for (over, setting) in cases {
        match load(over) {
            Err(Error::Invalid { name, reason }) => assert_eq!(name, setting, "{reason}"),
            other => panic!("{setting}: accepted: {other:?}"),
        }
    }
    let cfg = load(Overrides {
        journal_inline_max_kib: Some(0),
        ..Overrides::default()
    })
    .unwrap();
    assert_eq!(
        cfg.journal.inline_max_kib, 0,
        "0: every record by reference"
    );
    assert!(cfg.journal.enabled, "the journal is on by default");
}

/// The configuration a file with `text` gives, nothing else set.
pub(super) fn load_toml(text: &str) -> Result<Config> {
    load_toml_with(text, Overrides::default())
}

/// The configuration a file with `text` gives under the flags `over`.
pub(super) fn load_toml_with(text: &str, over: Overrides) -> Result<Config> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, text).unwrap();
    let over = Overrides {
        config: Some(file),
        ..over
    };
    Config::load(&over, &SecretEnv::default())
}

#[test]
fn dicom_nodes_are_read_and_bad_ones_refused() {
    let load = load_toml;
    let cfg = load(
        "[[dicom_nodes]]\nae_title = \"PACS\"\nhost = \"10.0.0.5\"\nport = 104\n\n\
         [[dicom_nodes]]\nae_title = \"CT1\"\nhost = \"::1\"\nport = 11112\ntls = true\n",
    )
    .unwrap();
    assert_eq!(cfg.dicom_node("PACS ").unwrap().address(), "10.0.0.5:104");
    let ct = cfg.dicom_node("CT1").unwrap();
    assert!(ct.tls);
    assert_eq!(ct.address(), "[::1]:11112");
    assert!(cfg.dicom_node("MR1").is_none());
    for bad in [
        "[[dicom_nodes]]\nae_title = \"\"\nhost = \"h\"\nport = 104\n",
        "[[dicom_nodes]]\nae_title = \"A_TITLE_FAR_TOO_LONG\"\nhost = \"h\"\nport = 104\n",
        "[[dicom_nodes]]\nae_title = \"A\"\nhost = \"\"\nport = 104\n",
        "[[dicom_nodes]]\nae_title = \"A\"\nhost = \"h\"\nport = 0\n",
        "[[dicom_nodes]]\nae_title = \"A\"\nhost = \"h\"\nport = 1\n\
         [[dicom_nodes]]\nae_title = \"A\"\nhost = \"g\"\nport = 2\n",
    ] {
        match load(bad) {
            Err(Error::Invalid { name, .. }) => assert_eq!(name, "dicom_nodes", "{bad}"),
            other => panic!("accepted {bad}: {other:?}"),
        }
    }
}

#[test]
fn absurd_commitment_retry_schedules_are_refused_naming_the_setting() {
    let load = |schedule: Vec<String>| {
        Config::load(
            &Overrides {
                storage_commitment_retry: Some(schedule),
                ..Overrides::default()
            },
            &SecretEnv::default(),
        )
    };
    let many = vec!["1s".to_owned(); 33];
    for bad in [
        many,
        vec!["soon".to_owned()],
        vec!["2d".to_owned()],
        vec!["1s".to_owned(), "-1s".to_owned()],
        vec![format!("{}s", u64::MAX)],
    ] {
        match load(bad.clone()) {
            Err(Error::Invalid { name, .. }) => {
                assert_eq!(name, "storage_commitment_retry", "{bad:?}")
            }
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }
    let cfg = load(vec!["1s".into(), "1h".into()]).unwrap();
    assert_eq!(cfg.storage_commitment_retry, ["1s", "1h"]);
    assert!(
        !Config::default().storage_commitment_retry.is_empty(),
        "a default schedule"
    );
}
