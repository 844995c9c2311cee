#!/bin/sh
# One-time setup of the single-node Garage of docker/compose.yaml, safe to
# run again (every start of the stack does): the node gets its role in the
# layout, the gateway's key and bucket exist, the key may read and write the
# bucket, and the key's id and secret are left as two files for the gateway
# (AWS_ACCESS_KEY_ID_FILE, AWS_SECRET_ACCESS_KEY_FILE). Nothing is printed
# that is secret.
#
# Uses the garage CLI, as Garage's own guides do: it reads the node's config
# (GARAGE_CONFIG, default /etc/garage.toml), its id from metadata_dir
# (mounted read-only) and the RPC secret from GARAGE_RPC_SECRET.
set -eu

CONFIG=${GARAGE_CONFIG:-/etc/garage.toml}
garage() { command garage -c "$CONFIG" "$@"; }

BUCKET=${GARAGE_BUCKET:-dicom}
KEY_NAME=${GARAGE_KEY_NAME:-dicom-gateway}
ZONE=${GARAGE_ZONE:-dc1}
CAPACITY=${GARAGE_CAPACITY:-100G}
OUT=${CREDENTIALS_DIR:-/credentials}
OWNER=${CREDENTIALS_OWNER:-10001:10001}

log() { echo "garage-init: $*" >&2; }
fail() { log "$*"; exit 1; }

# The node answers once its RPC is up (compose waits for its health check
# too; this covers running the script by hand). Bounded: 60 tries.
tries=0
until garage status >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || fail "garage does not answer: $(garage status 2>&1 || true)"
    sleep 1
done

# 1. Layout: a node without a role stores nothing. "pending..." is a role
#    staged by an earlier run that stopped before applying it.
if garage status | grep -q -e "NO ROLE ASSIGNED" -e "pending\.\.\."; then
    node=$(garage node id -q | cut -d@ -f1)
    [ -n "$node" ] || fail "no node id from 'garage node id'"
    version=$(garage layout show | sed -n 's/.*[Cc]urrent cluster layout version: *\([0-9][0-9]*\).*/\1/p' | head -n 1)
    case "$version" in
        '' | *[!0-9]*) fail "cannot read the current layout version from 'garage layout show'" ;;
    esac
    log "assigning node $(printf %.16s "$node") to zone $ZONE with $CAPACITY"
    garage layout assign -z "$ZONE" -c "$CAPACITY" "$node" >/dev/null
    garage layout apply --version "$((version + 1))" >/dev/null
else
    log "layout already has this node"
fi

# 2. The key (its secret is shown only with --show-secret).
if garage key info "$KEY_NAME" >/dev/null 2>&1; then
    log "key $KEY_NAME exists"
    info=$(garage key info --show-secret "$KEY_NAME")
else
    log "creating key $KEY_NAME"
    info=$(garage key create "$KEY_NAME")
fi
# "Key ID:<tab or spaces>GK..." and "Secret key:<...>hex" lines.
field() {
    printf '%s\n' "$info" | sed -n "s/^[[:space:]]*$1:[[:space:]]*\([^[:space:]]*\)[[:space:]]*\$/\1/p" | head -n 1
}
key_id=$(field "Key ID")
secret=$(field "Secret key")
case "$key_id" in
    GK*) ;;
    *) fail "cannot read the key id of $KEY_NAME" ;;
esac
case "$secret" in
    '' | *[!0-9a-f]*) fail "cannot read the secret of $KEY_NAME (shown as redacted?)" ;;
esac

# 3. The bucket, and the key's rights on it (allow is idempotent).
if garage bucket info "$BUCKET" >/dev/null 2>&1; then
    log "bucket $BUCKET exists"
else
    log "creating bucket $BUCKET"
    garage bucket create "$BUCKET" >/dev/null
fi
garage bucket allow --read --write --owner "$BUCKET" --key "$KEY_NAME" >/dev/null

# 4. Hand the key over: written whole (temp file, rename), the directory and
#    the files readable only by the gateway's uid.
umask 077
mkdir -p "$OUT"
chown "$OWNER" "$OUT"
chmod 0700 "$OUT"
for name in access_key_id secret_access_key; do
    case "$name" in
        access_key_id) value=$key_id ;;
        *) value=$secret ;;
    esac
    printf '%s\n' "$value" > "$OUT/.$name.tmp"
    chown "$OWNER" "$OUT/.$name.tmp"
    chmod 0400 "$OUT/.$name.tmp"
    mv -f "$OUT/.$name.tmp" "$OUT/$name"
done
log "ready: bucket $BUCKET, key $key_id"
