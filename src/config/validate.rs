//! Checking a loaded configuration before anything starts with it: every
//! refusal names the setting and says what is wrong.

use super::*;

impl Config {
    pub(super) fn validate(&self) -> Result<()> {
        let invalid = |name, reason: String| Err(Error::Invalid { name, reason });
        let ae = self.ae_title.trim();
        if ae.is_empty() || ae.len() > 16 || !ae.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return invalid(
                "ae_title",
                format!("{ae:?} is not 1–16 printable ASCII characters"),
            );
        }
        if !(MIN_PDU_LENGTH..=MAX_PDU_LENGTH).contains(&self.max_pdu_length) {
            return invalid(
                "max_pdu_length",
                format!(
                    "{} is outside {MIN_PDU_LENGTH}–{MAX_PDU_LENGTH}",
                    self.max_pdu_length
                ),
            );
        }
        if self.url_ttl == 0 || self.url_ttl > 7 * 24 * 3600 {
            return invalid("url_ttl", format!("{} is not 1 s – 7 days", self.url_ttl));
        }
        if self.max_associations == 0 {
            return invalid("max_associations", "must be at least 1".into());
        }
        for (name, value) in [
            (
                "max_pending_connections",
                self.max_pending_connections as u64,
            ),
            ("artim_timeout", self.artim_timeout),
            ("max_sequence_depth", u64::from(self.max_sequence_depth)),
            ("http_header_timeout", self.http_header_timeout),
            ("http_idle_timeout", self.http_idle_timeout),
            ("http_max_connections", self.http_max_connections as u64),
            (
                "report_fetch_concurrency",
                self.report_fetch_concurrency as u64,
            ),
            ("stable_after", self.stable_after),
            ("webhook_timeout", self.webhook_timeout),
            ("webhook_concurrency", self.webhook_concurrency as u64),
        ] {
            if value == 0 {
                return invalid(name, "must be at least 1".into());
            }
        }
        if let Err((name, reason)) = self.journal.validate() {
            return invalid(name, reason);
        }
        if let Err(reason) = nodes::validate(&self.dicom_nodes) {
            return invalid("dicom_nodes", reason);
        }
        self.validate_tls()?;
        if let Err(reason) = forward::validate(
            &self.forward,
            &self.forwarding,
            &self.dicom_nodes,
            self.dicom_tls_ca.is_some(),
        ) {
            return invalid("forward", reason);
        }
        if self.webhook_timeout > 300 {
            return invalid("webhook_timeout", "must be at most 300 seconds".into());
        }
        if let Err(reason) = self.retry_schedule() {
            return invalid("webhook_retry_schedule", reason);
        }
        if let Err(reason) = crate::commitment::parse_schedule(&self.storage_commitment_retry) {
            return invalid("storage_commitment_retry", reason);
        }
        if self.max_header_bytes < 64 * 1024 {
            return invalid("max_header_bytes", "must be at least 64 KiB".into());
        }
        if self.read_timeout == 0 || self.write_timeout == 0 {
            return invalid(
                "read_timeout/write_timeout",
                "must be at least 1 second".into(),
            );
        }
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return invalid(
                "public_url",
                format!("{:?} is not an http(s) URL", self.public_url),
            );
        }
        if let StorageLocation::S3 { .. } = self.storage_location()? {
            let st = &self.storage;
            for (name, url) in [
                ("storage.endpoint", &st.endpoint),
                ("storage.public_endpoint", &st.public_endpoint),
            ] {
                if let Some(url) = url {
                    if !(url.starts_with("https://")
                        || (url.starts_with("http://") && st.allow_http))
                    {
                        return invalid(
                            name,
                            format!(
                                "{url:?} is not an https URL (set storage.allow_http for http)"
                            ),
                        );
                    }
                }
            }
            if !(5 << 20..=512 << 20).contains(&st.part_size) {
                return invalid(
                    "storage.part_size",
                    "must be 5 MiB (S3's smallest part) to 512 MiB (each upload holds up to three in memory)".into(),
                );
            }
            if self.max_instance_size.div_ceil(st.part_size) > 10_000 {
                return invalid(
                    "storage.part_size",
                    format!(
                        "max_instance_size ({} bytes) would take more than S3's 10,000 parts",
                        self.max_instance_size
                    ),
                );
            }
            if st.max_uploads == 0 || st.timeout == 0 {
                return invalid(
                    "storage.max_uploads/storage.timeout",
                    "must be at least 1".into(),
                );
            }
            if let Err((name, reason)) = st.check_backlog() {
                return invalid(name, reason);
            }
            let c = &st.credentials;
            if c.access_key_id.is_some() != c.secret_access_key.is_some() {
                return invalid(
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
                    "set both or neither".into(),
                );
            }
        }
        for uid in &self.extra_sop_classes {
            if let Err(e) = crate::uid::Uid::parse(uid) {
                return invalid("extra_sop_classes", format!("{uid:?}: {e}"));
            }
        }
        Ok(())
    }

    /// `webhook_retry_schedule` parsed: 1 to 32 waits of at most a week.
    pub fn retry_schedule(&self) -> std::result::Result<Vec<Duration>, String> {
        let raw = &self.webhook_retry_schedule;
        if raw.is_empty() || raw.len() > 32 {
            return Err(format!("has {} entries; give 1 to 32", raw.len()));
        }
        raw.iter()
            .map(|text| {
                let wait = humantime::parse_duration(text.trim())
                    .map_err(|e| format!("{text:?} is not a duration: {e}"))?;
                if wait > Duration::from_secs(7 * 24 * 3600) {
                    return Err(format!("{text:?} is longer than a week"));
                }
                Ok(wait)
            })
            .collect()
    }
}
