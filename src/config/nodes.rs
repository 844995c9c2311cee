//! `[[dicom_nodes]]`: the remote DICOM applications the gateway opens
//! associations to — forwarding destinations, and modalities that asked for
//! a storage commitment and must be told the result on a new association.
//! One table for both, as dcm4chee's AE list and Orthanc's `DicomModalities`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomNode {
    /// Its AE title: the called AE of our associations, and the calling AE
    /// it uses towards us (how a commitment requester is found).
    pub ae_title: String,
    /// Host name or address.
    pub host: String,
    /// Its DICOM port.
    pub port: u16,
    /// Open the association over TLS (our certificate and CA as for
    /// `dicom_tls_listen`).
    #[serde(default)]
    pub tls: bool,
}

impl DicomNode {
    /// `host:port`, for connecting and for logs.
    pub fn address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Refuses a node table the gateway could not use, naming the entry.
pub fn validate(nodes: &[DicomNode]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for node in nodes {
        let ae = node.ae_title.trim();
        if ae.is_empty() || ae.len() > 16 || !ae.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(format!("{ae:?} is not 1–16 printable ASCII characters"));
        }
        if !seen.insert(ae.to_owned()) {
            return Err(format!("{ae:?} is listed twice"));
        }
        if node.host.trim().is_empty() || node.host.len() > 253 {
            return Err(format!("{ae:?}: host is empty or too long"));
        }
        if node.port == 0 {
            return Err(format!("{ae:?}: port 0"));
        }
    }
    Ok(())
}

impl crate::config::Config {
    /// The node with this AE title (trailing spaces ignored).
    pub fn dicom_node(&self, ae_title: &str) -> Option<&DicomNode> {
        let ae = ae_title.trim();
        self.dicom_nodes.iter().find(|n| n.ae_title.trim() == ae)
    }
}
