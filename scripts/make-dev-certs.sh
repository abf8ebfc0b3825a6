#!/usr/bin/env bash
# A private CA and a server certificate for the compose deployment's proxy
# (names: proxy, localhost, 127.0.0.1). Gateways trust the CA through TD_CA_BUNDLE.
set -euo pipefail
out=${1:-deploy/certs}
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=TD private CA" \
    -keyout ca-key.pem -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=proxy" -keyout proxy-key.pem -out proxy.csr 2>/dev/null
printf 'subjectAltName=DNS:proxy,DNS:localhost,IP:127.0.0.1\n' > san.ext
openssl x509 -req -in proxy.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
    -extfile san.ext -out proxy.pem 2>/dev/null
rm -f proxy.csr san.ext ca.srl
chmod 600 ./*-key.pem
# Until `td-backend client-ca` is saved here, nginx verifies gateways' client certificates
# against a CA that signed none of them: gateways are then judged by their API key alone.
[ -e client-ca.pem ] || cp ca.pem client-ca.pem
echo "wrote $(pwd)/{ca.pem,proxy.pem,proxy-key.pem}"
