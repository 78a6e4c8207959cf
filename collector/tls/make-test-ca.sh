#!/bin/sh
# Makes a throwaway CA and certificates for trying tokenwatch's TLS, with the openssl CLI.
#
#   make-test-ca.sh DIR [NODE...]
#
# DIR/ca.pem, ca.key            the CA (give ca.pem to the collector as --tls-client-ca and to
#                               agents as collector_tls_ca)
# DIR/collector.pem, .key       the collector's certificate, valid for localhost and 127.0.0.1
#                               (add names with COLLECTOR_SANS="DNS:collector.example,IP:10.0.0.5")
# DIR/NODE.pem, NODE.key        one client certificate per node, CN and DNS SAN = the node name
#                               (collector_tls_cert / collector_tls_key of that node's agent)
# DIR/operator.pem, .key        a client certificate for tokenwatchctl
#
# For tests and evaluation only: the keys are unencrypted and the CA lives 30 days.
set -eu
dir=${1:?usage: make-test-ca.sh DIR [NODE...]}
shift
mkdir -p "$dir"
cd "$dir"
umask 077

openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=tokenwatch test CA" \
  -keyout ca.key -out ca.pem 2>/dev/null

# issue NAME SANS: a key and a certificate signed by the CA.
issue() {
  name=$1
  sans=$2
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" -keyout "$name.key" \
    -out "$name.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$sans" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

issue collector "DNS:localhost,IP:127.0.0.1${COLLECTOR_SANS:+,$COLLECTOR_SANS}"
issue operator "DNS:operator"
for node in "$@"; do
  issue "$node" "DNS:$node"
done
chmod 644 ./*.pem
echo "test CA and certificates in $dir"
