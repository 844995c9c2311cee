use super::disk::{MAX_INDEX_DEPTH, dir_size};
use std::time::Duration;

use super::*;

/// The sample lines of `name` (with labels), from a rendering.
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .collect()
}

#[test]
fn hostile_calling_ae_titles_cannot_grow_the_registry() {
    let m = Metrics::new();
    for n in 0..1000 {
        m.instance_answered(0, &format!("AE{n}"), Duration::from_millis(1));
    }
    m.instance_answered(0xA700, "AE0", Duration::from_millis(1));
    let text = m.render();
    let lines = samples(&text, "dicom_gateway_instances_total");
    // 64 own series + (other) for the stored ones, one refused.
    assert_eq!(lines.len(), MAX_CALLING_AES + 2, "{lines:#?}");
    let other = lines
        .iter()
        .find(|l| l.contains("calling_ae=\"(other)\""))
        .expect("an (other) series");
    assert!(
        other.ends_with(&format!(" {}", 1000 - MAX_CALLING_AES)),
        "{other}"
    );
    assert!(
        lines.iter().any(|l| l.contains("outcome=\"refused\"")
            && l.contains("status=\"A700\"")
            && l.contains("calling_ae=\"AE0\"")
            && l.ends_with(" 1")),
        "{lines:#?}"
    );
}

#[test]
fn calling_ae_labels_are_printable_and_short() {
    let m = Metrics::new();
    m.instance_answered(
        0,
        " EVIL\"}\n\u{7f}AE_WITH_A_VERY_LONG_TITLE ",
        Duration::ZERO,
    );
    let text = m.render();
    let lines = samples(&text, "dicom_gateway_instances_total");
    assert_eq!(lines.len(), 1);
    // The quote is escaped, the newline and DEL are gone, 16 characters kept.
    assert!(
        lines[0].contains(r#"calling_ae="EVIL\"}AE_WITH_A_""#),
        "{}",
        lines[0]
    );
}

#[test]
fn warnings_count_as_stored() {
    let m = Metrics::new();
    m.instance_answered(0xB007, "CT", Duration::ZERO);
    m.instance_answered(0xC000, "CT", Duration::ZERO);
    let text = m.render();
    let lines = samples(&text, "dicom_gateway_instances_total");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("outcome=\"stored\",status=\"B007\""))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("outcome=\"refused\",status=\"C000\""))
    );
}

#[test]
fn webhook_event_labels_are_avaras_types_only() {
    assert_eq!(
        webhook_event(br#"{"type":"study.access_requested","data":{}}"#),
        "study.access_requested"
    );
    assert_eq!(webhook_event(br#"{"type":"x.y.z","data":{}}"#), "other");
    assert_eq!(webhook_event(b"not json"), "unreadable");
    assert_eq!(webhook_event(br#"{"type":42}"#), "unreadable");
}

#[test]
fn renders_prometheus_text_with_units_and_histograms() {
    let m = Metrics::new();
    m.commit_batch(3);
    m.store_request("put", Duration::from_millis(3), true);
    let text = m.render();
    for needle in [
        "# TYPE dicom_gateway_commit_batch_instances histogram",
        "dicom_gateway_commit_batch_instances_bucket{le=\"4\"} 1",
        "dicom_gateway_commit_batch_instances_count 1",
        "# TYPE dicom_gateway_store_request_duration_seconds histogram",
        "dicom_gateway_store_request_errors_total{operation=\"put\"} 1",
        "# TYPE dicom_gateway_associations_open gauge",
        "dicom_gateway_build_info{version=\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(!text.contains("# EOF"), "OpenMetrics, not Prometheus text");
}

#[test]
fn report_job_states_are_all_present() {
    let m = Metrics::new();
    m.report_jobs(["pending", "stored", "stored"].into_iter());
    let text = m.render();
    let lines = samples(&text, "dicom_gateway_report_jobs");
    assert!(lines.contains(&"dicom_gateway_report_jobs{state=\"pending\"} 1"));
    assert!(lines.contains(&"dicom_gateway_report_jobs{state=\"stored\"} 2"));
    assert!(lines.contains(&"dicom_gateway_report_jobs{state=\"failed\"} 0"));
}

#[test]
fn index_size_is_bounded_by_depth() {
    let dir = tempfile::tempdir().unwrap();
    let mut deep = dir.path().to_owned();
    std::fs::write(deep.join("db"), vec![0u8; 100]).unwrap();
    for level in 0..10 {
        deep = deep.join(format!("d{level}"));
        std::fs::create_dir(&deep).unwrap();
        std::fs::write(deep.join("f"), vec![0u8; 10]).unwrap();
    }
    // The top file and those of the MAX_INDEX_DEPTH levels below it.
    let expected = 100 + 10 * MAX_INDEX_DEPTH as u64;
    assert_eq!(dir_size(dir.path(), 0, &mut 0), expected);
}

#[test]
fn an_association_is_open_while_its_guard_lives() {
    let m = Metrics::new();
    let open = |m: &Metrics| {
        m.render()
            .lines()
            .find(|l| l.starts_with("dicom_gateway_associations_open "))
            .unwrap()
            .to_owned()
    };
    let a = m.association_opened();
    let b = m.association_opened();
    assert_eq!(open(&m), "dicom_gateway_associations_open 2");
    drop(a);
    assert_eq!(open(&m), "dicom_gateway_associations_open 1");
    drop(b);
    assert_eq!(open(&m), "dicom_gateway_associations_open 0");
    assert!(m.render().contains("dicom_gateway_associations_total 2\n"));
}

#[test]
fn upload_backlog_gauges_and_retries_are_rendered() {
    let m = Metrics::new();
    let text = m.render();
    assert!(
        samples(&text, "dicom_gateway_upload_retries_total")
            .contains(&"dicom_gateway_upload_retries_total 0")
    );
    m.upload_backlog(3, 12_345);
    m.upload_retry();
    m.upload_retry();
    let text = m.render();
    for (name, line) in [
        (
            "dicom_gateway_upload_backlog_instances",
            "dicom_gateway_upload_backlog_instances 3",
        ),
        (
            "dicom_gateway_upload_backlog_bytes",
            "dicom_gateway_upload_backlog_bytes 12345",
        ),
        (
            "dicom_gateway_upload_retries_total",
            "dicom_gateway_upload_retries_total 2",
        ),
    ] {
        assert_eq!(samples(&text, name), vec![line], "{text}");
    }
    assert!(text.contains("# TYPE dicom_gateway_upload_backlog_bytes gauge"));
}
