//! A raw SCU on dicom-ul's client, for what DCMTK and pynetdicom will not send:
//! fragmented commands, command and data in one PDU, empty P-DATA, mismatched
//! UIDs, garbage, unknown commands, an abort mid-instance.

use std::net::{SocketAddr, TcpStream};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::ClientAssociation;
use dicom_ul::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};

pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

pub struct Scu {
    assoc: ClientAssociation<TcpStream>,
    pub pc: u8,
    next_id: u16,
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub field: u16,
    pub message_id: u16,
    pub status: u16,
    pub comment: Option<String>,
}

impl Scu {
    pub fn connect(addr: SocketAddr, abstract_syntax: &str, ts: &str) -> Scu {
        let assoc = ClientAssociationOptions::new()
            .calling_ae_title("RUSTSCU")
            .called_ae_title("DICOMGW")
            .with_presentation_context(abstract_syntax, vec![ts])
            .establish(addr)
            .expect("association with the gateway");
        let pc = assoc.presentation_contexts()[0].id;
        Scu {
            assoc,
            pc,
            next_id: 1,
        }
    }

    pub fn command(
        &mut self,
        field: u16,
        class: &str,
        instance: &str,
        with_data: bool,
    ) -> (u16, Vec<u8>) {
        let id = self.next_id;
        self.next_id += 1;
        let obj = InMemDicomObject::command_from_element_iter([
            DataElement::new(
                tags::AFFECTED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(class),
            ),
            DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(field)),
            DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(id)),
            DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0u16)),
            DataElement::new(
                tags::COMMAND_DATA_SET_TYPE,
                VR::US,
                PrimitiveValue::from(if with_data { 0x0000u16 } else { 0x0101 }),
            ),
            DataElement::new(
                tags::AFFECTED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(instance),
            ),
        ]);
        let mut bytes = Vec::new();
        obj.write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .unwrap();
        (id, bytes)
    }

    pub fn pdv(&self, kind: PDataValueType, is_last: bool, data: &[u8]) -> PDataValue {
        PDataValue {
            presentation_context_id: self.pc,
            value_type: kind,
            is_last,
            data: data.to_vec(),
        }
    }

    /// Sends P-DATA; false once the gateway has closed the association.
    pub fn try_send(&mut self, pdvs: Vec<PDataValue>) -> bool {
        self.assoc.send(&Pdu::PData { data: pdvs }).is_ok()
    }

    pub fn send(&mut self, pdvs: Vec<PDataValue>) {
        self.assoc
            .send(&Pdu::PData { data: pdvs })
            .expect("send P-DATA");
    }

    /// A C-STORE with the command and the first data fragment in one PDU,
    /// the rest in `chunk`-sized PDVs.
    pub fn store(&mut self, class: &str, instance: &str, dataset: &[u8], chunk: usize) -> Response {
        let (id, cmd) = self.command(0x0001, class, instance, true);
        let mut chunks: Vec<&[u8]> = dataset.chunks(chunk).collect();
        let first = chunks.remove(0);
        let cmd_pdv = self.pdv(PDataValueType::Command, true, &cmd);
        let first_pdv = self.pdv(PDataValueType::Data, chunks.is_empty(), first);
        self.send(vec![cmd_pdv, first_pdv]);
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            let pdv = self.pdv(PDataValueType::Data, i + 1 == n, c);
            self.send(vec![pdv]);
        }
        let rsp = self.response();
        assert_eq!(rsp.message_id, id);
        rsp
    }

    pub fn response(&mut self) -> Response {
        let mut buf = Vec::new();
        loop {
            match self.assoc.receive().expect("a response") {
                Pdu::PData { data } => {
                    for pdv in data {
                        assert_eq!(pdv.value_type, PDataValueType::Command);
                        buf.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            return parse_response(&buf);
                        }
                    }
                }
                other => panic!("expected a response, got {other:?}"),
            }
        }
    }

    pub fn release(self) {
        self.assoc.release().expect("release");
    }

    pub fn abort(self) {
        self.assoc.abort().expect("abort");
    }

    /// Whether the next thing from the gateway is an A-ABORT (or the end of
    /// the connection right after one).
    pub fn receive_abort(&mut self) -> bool {
        matches!(self.assoc.receive(), Ok(Pdu::AbortRQ { .. }))
    }
}

fn parse_response(bytes: &[u8]) -> Response {
    let obj =
        InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
    let us = |t| obj.element(t).unwrap().to_int::<u16>().unwrap();
    Response {
        field: us(tags::COMMAND_FIELD),
        message_id: us(tags::MESSAGE_ID_BEING_RESPONDED_TO),
        status: us(tags::STATUS),
        comment: obj
            .element_opt(tags::ERROR_COMMENT)
            .unwrap()
            .map(|e| e.to_str().unwrap().trim().to_owned()),
    }
}
