//! Certificates and verifiers: a replica's TLS identity is its ed25519 protocol key.
//!
//! Each replica presents a self-signed certificate made (with rcgen) from its own protocol key. Nothing about the
//! certificate matters but the key in its SubjectPublicKeyInfo: no CA, no chain, no expiry, no names. What proves
//! that the peer holds that key is the TLS 1.3 `CertificateVerify` signature over the handshake, which the
//! verifiers below check with the ring provider's algorithms like any rustls verifier would.
//!
//! - [`ReplicaServerVerifier`] (dialer side): the listener must present exactly the key configured for the
//!   replica that was dialed.
//! - [`ClusterClientVerifier`] (listener side): the dialer must present a client certificate whose key is one of
//!   the cluster's replica keys; that key names the sender.

use std::sync::Arc;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use pbft_crypto::KeyPair;
use pbft_types::{PublicKeyBytes, ReplicaId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::oid_registry::OID_SIG_ED25519;
use x509_parser::prelude::FromDer;

/// The crypto provider every transport connection uses: ring, TLS 1.3 only (see `client_config`).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The name a dialer puts in its ClientHello (and the certificate's subject alternative name). It is informative
/// only: the verifiers check keys, never names.
pub(crate) fn server_name(id: ReplicaId) -> Result<ServerName<'static>, rustls::Error> {
    ServerName::try_from(format!("replica-{id}"))
        .map_err(|e| rustls::Error::General(format!("server name for replica {id}: {e}")))
}

/// A replica's certificate and the matching private key, in the forms rustls takes.
pub(crate) struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// A self-signed certificate for replica `id` carrying `key`'s public key.
    pub(crate) fn new(id: ReplicaId, key: &KeyPair) -> Result<Identity, String> {
        let signing = ed25519_dalek::SigningKey::from_bytes(&key.seed());
        let document = signing
            .to_pkcs8_der()
            .map_err(|e| format!("PKCS#8 encoding of the replica key: {e}"))?;
        let pkcs8 = PrivatePkcs8KeyDer::from(document.as_bytes().to_vec());
        let cert_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|e| format!("replica key for the certificate: {e}"))?;
        let mut params = rcgen::CertificateParams::new(vec![format!("replica-{id}")])
            .map_err(|e| format!("certificate parameters: {e}"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("pbft replica {id}"));
        let cert = params
            .self_signed(&cert_key)
            .map_err(|e| format!("self-signing the certificate: {e}"))?;
        Ok(Identity {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(pkcs8),
        })
    }
}

/// The ed25519 key in a certificate's SubjectPublicKeyInfo. A certificate that does not parse is `BadEncoding`;
/// one with another kind of key (or parameters, which RFC 8410 forbids) is refused like a wrong key.
pub(crate) fn ed25519_key(cert: &CertificateDer<'_>) -> Result<PublicKeyBytes, CertificateError> {
    let (rest, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|_| CertificateError::BadEncoding)?;
    if !rest.is_empty() {
        return Err(CertificateError::BadEncoding);
    }
    let spki = parsed.public_key();
    if spki.algorithm.algorithm != OID_SIG_ED25519 || spki.algorithm.parameters.is_some() {
        return Err(CertificateError::ApplicationVerificationFailure);
    }
    if spki.subject_public_key.unused_bits != 0 {
        return Err(CertificateError::BadEncoding);
    }
    <PublicKeyBytes>::try_from(spki.subject_public_key.data.as_ref())
        .map_err(|_| CertificateError::BadEncoding)
}

/// The error a verifier returns for a well-formed certificate whose key is not the one wanted.
fn wrong_key() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not used between replicas".into())
}

/// Dialer side: the listener must be the replica that was dialed, i.e. present `expected` as its key.
#[derive(Debug)]
pub(crate) struct ReplicaServerVerifier {
    peer: ReplicaId,
    expected: PublicKeyBytes,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ReplicaServerVerifier {
    pub(crate) fn new(
        peer: ReplicaId,
        expected: PublicKeyBytes,
        provider: &CryptoProvider,
    ) -> Self {
        ReplicaServerVerifier {
            peer,
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ReplicaServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = ed25519_key(end_entity).map_err(rustls::Error::InvalidCertificate)?;
        if key != self.expected {
            tracing::warn!(
                peer = %self.peer,
                presented = %hex::encode(key),
                "the replica dialed presented a key that is not its configured key"
            );
            return Err(wrong_key());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Listener side: the dialer must present a certificate carrying one of the cluster's replica keys.
#[derive(Debug)]
pub(crate) struct ClusterClientVerifier {
    replicas: Vec<PublicKeyBytes>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClusterClientVerifier {
    pub(crate) fn new(replicas: Vec<PublicKeyBytes>, provider: &CryptoProvider) -> Self {
        ClusterClientVerifier {
            replicas,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = ed25519_key(end_entity).map_err(rustls::Error::InvalidCertificate)?;
        if !self.replicas.contains(&key) {
            tracing::warn!(
                presented = %hex::encode(key),
                "a dialer presented a key that is not a replica of this cluster"
            );
            return Err(wrong_key());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The dialer's configuration for one peer: TLS 1.3 only, our certificate as client certificate, the peer's key
/// as the only acceptable server key, no session resumption (every connection proves its key afresh).
pub(crate) fn client_config(
    identity: &Identity,
    peer: ReplicaId,
    peer_key: PublicKeyBytes,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(ReplicaServerVerifier::new(peer, peer_key, &provider));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The listener's configuration: TLS 1.3 only, a client certificate from the cluster required, no tickets.
pub(crate) fn server_config(
    identity: &Identity,
    replicas: Vec<PublicKeyBytes>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(ClusterClientVerifier::new(replicas, &provider));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// Whether a failed handshake was an authentication failure (a certificate or key we refuse, or none), as
/// opposed to a peer that is down, went away, or does not speak TLS.
pub(crate) fn is_auth_failure(error: &std::io::Error) -> bool {
    let Some(inner) = error.get_ref() else {
        return false;
    };
    matches!(
        inner.downcast_ref::<rustls::Error>(),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::AlertReceived(
                    rustls::AlertDescription::BadCertificate
                        | rustls::AlertDescription::CertificateRequired
                        | rustls::AlertDescription::UnsupportedCertificate
                        | rustls::AlertDescription::CertificateUnknown
                        | rustls::AlertDescription::UnknownCA
                        | rustls::AlertDescription::AccessDenied
                        | rustls::AlertDescription::DecryptError
                )
        )
    )
}
