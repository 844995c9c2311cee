//! The TLS settings (`dicom_tls_*`, `http_tls_*`): overlaid from flags and
//! environment, and checked by building what they describe (src/tls.rs), so
//! a missing or unreadable file, a PEM without a key or a key that does not
//! match its certificate stops the start with the setting's name.

use super::{Config, Error, Overrides, Result};

impl Config {
    pub(super) fn overlay_tls(&mut self, over: &Overrides) {
        if over.dicom_tls_listen.is_some() {
            self.dicom_tls_listen = over.dicom_tls_listen;
        }
        for (field, value) in [
            (&mut self.dicom_tls_cert, &over.dicom_tls_cert),
            (&mut self.dicom_tls_key, &over.dicom_tls_key),
            (&mut self.dicom_tls_ca, &over.dicom_tls_ca),
            (&mut self.http_tls_cert, &over.http_tls_cert),
            (&mut self.http_tls_key, &over.http_tls_key),
        ] {
            if value.is_some() {
                field.clone_from(value);
            }
        }
        if over.dicom_tls_verify_client.is_some() {
            self.dicom_tls_verify_client = over.dicom_tls_verify_client;
        }
    }

    pub(super) fn validate_tls(&self) -> Result<()> {
        crate::tls::check(self).map_err(|e| {
            let name = e.setting();
            let text = e.to_string();
            let reason = match text.strip_prefix(name).and_then(|r| r.strip_prefix(": ")) {
                Some(rest) => rest.to_owned(),
                None => text.clone(),
            };
            Error::Invalid { name, reason }
        })
    }

    /// Whether the HTTP listener serves HTTPS.
    pub fn https(&self) -> bool {
        self.http_tls_cert.is_some() && self.http_tls_key.is_some()
    }
}
