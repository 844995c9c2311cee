#!/bin/sh
# Test PKI for the TLS tests and benchmarks, with openssl, into DIR:
#   ca.pem/ca.key             the site CA
#   server.pem/server.key     the gateway (localhost, 127.0.0.1), from the CA; also
#                             its client certificate towards [[dicom_nodes]] with tls
#                             (forwarding, storage commitment reports)
#   client.pem/client.key     a modality (CN=MODALITY1), from the CA
#   other-ca.pem/other-ca.key a CA the gateway does not trust
#   stranger.pem/stranger.key a client certificate from other-ca
# Usage: make-test-certs.sh DIR   (idempotent: does nothing once DIR/stranger.pem exists)
set -eu
dir=$1
mkdir -p "$dir"
cd "$dir"
[ -s stranger.pem ] && exit 0
ca() {
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -keyout "$1.key" -out "$1.pem" -subj "/O=$2/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
leaf() {
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$1.key" -out "$1.csr" \
        -subj "$3" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "$4" >"$1.ext"
    openssl x509 -req -sha256 -days 3650 -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" \
        -CAcreateserial -out "$1.pem" -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
ca ca "Test Site CA"
ca other-ca "Other CA"
leaf server ca "/O=Test Site/CN=localhost" \
    "extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
leaf client ca "/O=Test Site/CN=MODALITY1" "extendedKeyUsage=clientAuth,serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
leaf stranger other-ca "/O=Elsewhere/CN=STRANGER" "extendedKeyUsage=clientAuth"
chmod 600 ./*.key
