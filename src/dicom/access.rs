//! Who may associate: the called AE title must be ours, and the calling AE
//! title must be on the allow-list when there is one. (Peer IPs are checked
//! before negotiation, in the listener, since dicom-ul does not show them here.)

use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};

#[derive(Debug, Clone, Default)]
pub struct AeAccess {
    allowed_calling: Vec<String>,
}

impl AeAccess {
    pub fn new(allowed_calling: &[String]) -> Self {
        AeAccess {
            allowed_calling: allowed_calling
                .iter()
                .map(|a| a.trim().to_owned())
                .collect(),
        }
    }
}

impl AccessControl for AeAccess {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if this_ae_title.trim() != called_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        let calling = calling_ae_title.trim();
        if !self.allowed_calling.is_empty() && !self.allowed_calling.iter().any(|a| a == calling) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn called_title_must_be_ours_and_calling_title_listed() {
        let open = AeAccess::new(&[]);
        assert!(
            open.check_access("DICOMGW", "ANY", "DICOMGW ", None)
                .is_ok()
        );
        assert_eq!(
            open.check_access("DICOMGW", "ANY", "OTHER", None),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
        let closed = AeAccess::new(&["CT01".into()]);
        assert!(
            closed
                .check_access("DICOMGW", "CT01", "DICOMGW", None)
                .is_ok()
        );
        assert_eq!(
            closed.check_access("DICOMGW", "MR01", "DICOMGW", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
    }
}
