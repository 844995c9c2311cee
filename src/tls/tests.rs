use std::path::PathBuf;

use super::testcerts::Pki;
use super::*;
use crate::config::{Overrides, SecretEnv};

fn listen() -> Option<std::net::SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

fn load(over: Overrides) -> Result<Config, String> {
    Config::load(&over, &SecretEnv::default()).map_err(|e| e.to_string())
}

/// A TLS listener with the gateway's certificate, the site CA and client
/// verification as configured.
fn dicom_overrides(pki: &Pki) -> Overrides {
    Overrides {
        dicom_tls_listen: listen(),
        dicom_tls_cert: Some(pki.path("server.pem")),
        dicom_tls_key: Some(pki.path("server.key")),
        dicom_tls_ca: Some(pki.path("ca.pem")),
        ..Default::default()
    }
}

fn refused(over: Overrides, setting: &str, words: &str) {
    let err = load(over).expect_err("should be refused");
    assert!(
        err.contains(&format!("invalid setting {setting}:")) && err.contains(words),
        "expected a refusal of {setting} mentioning {words:?}, got: {err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}

#[test]
fn usable_settings_load_and_verification_defaults_to_the_ca() {
    let pki = Pki::new();
    let cfg = load(dicom_overrides(&pki)).unwrap();
    assert!(verify_clients(&cfg));
    assert!(dicom_server_config(&cfg).unwrap().is_some());
    let without_ca = Overrides {
        dicom_tls_ca: None,
        ..dicom_overrides(&pki)
    };
    assert!(!verify_clients(&load(without_ca).unwrap()));
    let https = Overrides {
        http_tls_cert: Some(pki.path("server.pem")),
        http_tls_key: Some(pki.path("server.key")),
        ..Default::default()
    };
    let cfg = load(https).unwrap();
    assert!(cfg.https());
    let http = http_server_config(&cfg).unwrap().unwrap();
    assert_eq!(http.alpn_protocols, vec![b"http/1.1".to_vec()]);
}

#[test]
fn unusable_tls_settings_are_refused_naming_the_setting() {
    let pki = Pki::new();
    let base = || dicom_overrides(&pki);
    // Listener without certificate or key.
    refused(
        Overrides {
            dicom_tls_cert: None,
            dicom_tls_key: None,
            ..base()
        },
        "dicom_tls_cert",
        "required",
    );
    refused(
        Overrides {
            dicom_tls_key: None,
            ..base()
        },
        "dicom_tls_key",
        "required",
    );
    // Missing and unreadable files.
    refused(
        Overrides {
            dicom_tls_cert: Some(PathBuf::from("/nonexistent/server.pem")),
            ..base()
        },
        "dicom_tls_cert",
        "/nonexistent/server.pem",
    );
    refused(
        Overrides {
            dicom_tls_ca: Some(pki.path("")),
            ..base()
        },
        "dicom_tls_ca",
        "cannot read",
    );
    // A PEM without a key, or without a certificate.
    refused(
        Overrides {
            dicom_tls_key: Some(pki.path("server.pem")),
            ..base()
        },
        "dicom_tls_key",
        "no private key",
    );
    refused(
        Overrides {
            dicom_tls_cert: Some(pki.path("server.key")),
            ..base()
        },
        "dicom_tls_cert",
        "no certificate",
    );
    // A key that belongs to another certificate.
    refused(
        Overrides {
            dicom_tls_key: Some(pki.path("client.key")),
            ..base()
        },
        "dicom_tls_key",
        "does not match",
    );
    refused(
        Overrides {
            http_tls_cert: Some(pki.path("server.pem")),
            http_tls_key: Some(pki.path("stranger.key")),
            ..Default::default()
        },
        "http_tls_key",
        "does not match",
    );
    // Half of the HTTPS pair.
    refused(
        Overrides {
            http_tls_cert: Some(pki.path("server.pem")),
            ..Default::default()
        },
        "http_tls_key",
        "required",
    );
    // Demanding client certificates with nothing to verify them against.
    refused(
        Overrides {
            dicom_tls_ca: None,
            dicom_tls_verify_client: Some(true),
            ..base()
        },
        "dicom_tls_verify_client",
        "dicom_tls_ca",
    );
}

#[test]
fn the_tls_client_needs_the_ca() {
    let pki = Pki::new();
    let cfg = load(Overrides::default()).unwrap();
    assert!(TlsClient::from_config(&cfg).unwrap().is_none());
    let cfg = load(Overrides {
        dicom_tls_ca: Some(pki.path("ca.pem")),
        ..Default::default()
    })
    .unwrap();
    assert!(TlsClient::from_config(&cfg).unwrap().is_some());
    // Our certificate without its key is refused, naming the missing one.
    refused(
        Overrides {
            dicom_tls_ca: Some(pki.path("ca.pem")),
            dicom_tls_cert: Some(pki.path("client.pem")),
            ..Default::default()
        },
        "dicom_tls_key",
        "required",
    );
}

/// The client helper against dicom-ul's own TLS acceptor with our server
/// configuration: the association forms, each side sees the other's
/// certificate; a client certificate from another CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_helper_associates_over_mutual_tls() {
    use dicom_ul::association::Association as _;
    let pki = Pki::new();
    let server_cfg = load(dicom_overrides(&pki)).unwrap();
    let server_tls = dicom_server_config(&server_cfg).unwrap().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let options = dicom_ul::association::server::ServerAssociationOptions::new()
            .accept_any()
            .ae_title("PACS")
            .with_abstract_syntax(dicom_dictionary_std::uids::VERIFICATION)
            .tls_config(server_tls);
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            let (socket, _) = listener.accept().await.unwrap();
            outcomes.push(match options.establish_tls_async(socket).await {
                Ok(mut assoc) => {
                    let names = peer_names(assoc.inner_stream().get_ref().1);
                    let _ = assoc.receive().await; // the client's release
                    let _ = assoc.send(&dicom_ul::Pdu::ReleaseRP).await;
                    Ok(names.map(|n| n.subject))
                }
                Err(e) => Err(e.to_string()),
            });
        }
        outcomes
    });

    let node = DicomNode {
        ae_title: "PACS".into(),
        host: "127.0.0.1".into(),
        port,
        tls: true,
    };
    let modality = |cert: &str, key: &str| {
        let cfg = load(Overrides {
            dicom_tls_cert: Some(pki.path(cert)),
            dicom_tls_key: Some(pki.path(key)),
            dicom_tls_ca: Some(pki.path("ca.pem")),
            ..Default::default()
        })
        .unwrap();
        TlsClient::from_config(&cfg).unwrap().unwrap()
    };
    let options = || {
        dicom_ul::ClientAssociationOptions::new()
            .calling_ae_title("GATEWAY")
            .with_abstract_syntax(dicom_dictionary_std::uids::VERIFICATION)
    };
    let mut assoc = modality("client.pem", "client.key")
        .associate(options(), &node)
        .await
        .unwrap();
    assert_eq!(assoc.peer_ae_title(), "PACS");
    let server_seen = assoc
        .inner_stream()
        .get_ref()
        .1
        .peer_certificates()
        .unwrap()[0]
        .clone();
    assert_eq!(
        x509::names(&server_seen).unwrap().subject,
        "O=Test Site, CN=localhost"
    );
    assoc.release().await.unwrap();

    let stranger = modality("stranger.pem", "stranger.key")
        .associate(options(), &node)
        .await;
    assert!(
        stranger.is_err(),
        "a certificate from another CA associated"
    );

    let outcomes = server.await.unwrap();
    assert_eq!(
        outcomes[0],
        Ok(Some("O=Test Site, CN=MODALITY1".to_owned())),
        "{outcomes:?}"
    );
    assert!(outcomes[1].is_err(), "{outcomes:?}");
}
