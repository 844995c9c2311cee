#!/bin/sh
# Entrypoint of the dicom-gateway image: settles where configuration and
# secrets come from, then becomes the gateway (exec: it receives the stop
# signal itself and its exit status is the container's).
#
#   docker run IMAGE                 # serve
#   docker run IMAGE healthcheck     # any subcommand or flag of dicom-gateway
#   docker run IMAGE --print-config
#
# - The TOML file: DICOM_GATEWAY_CONFIG if set, else /etc/dicom-gateway/gateway.toml
#   when it exists (mounted), else none (defaults plus DICOM_GATEWAY_* variables).
# - The S3 credentials may come from files, as Docker/Compose secrets are given:
#   AWS_ACCESS_KEY_ID_FILE, AWS_SECRET_ACCESS_KEY_FILE, AWS_SESSION_TOKEN_FILE
#   (the gateway reads its own secrets, DICOM_GATEWAY_API_TOKEN_FILE and
#   DICOM_GATEWAY_AVARA_WEBHOOK_KEY_FILE, itself). A variable and its _FILE
#   together are refused, as the gateway refuses them for its own secrets.
set -eu

DEFAULT_CONFIG=/etc/dicom-gateway/gateway.toml

if [ -z "${DICOM_GATEWAY_CONFIG:-}" ] && [ -f "$DEFAULT_CONFIG" ]; then
    export DICOM_GATEWAY_CONFIG="$DEFAULT_CONFIG"
fi

# file_env VAR: VAR from the file named by VAR_FILE, when that is set.
file_env() {
    var=$1
    file_var="${var}_FILE"
    eval "value=\${$var:-}"
    eval "file=\${$file_var:-}"
    if [ -z "$file" ]; then
        return 0
    fi
    if [ -n "$value" ]; then
        echo "docker-entrypoint: set $var or $file_var, not both" >&2
        exit 1
    fi
    if [ ! -r "$file" ]; then
        echo "docker-entrypoint: $file_var: cannot read $file" >&2
        exit 1
    fi
    # Trailing newlines go (command substitution drops them), as the
    # gateway trims its own secret files.
    value=$(cat "$file")
    export "$var=$value"
    unset "$file_var"
}

for var in AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN; do
    file_env "$var"
done
unset var file_var value file

# Flags alone (`docker run IMAGE --print-config`, `--version`) go to the
# bare command, which serves with them.
exec dicom-gateway "$@"
