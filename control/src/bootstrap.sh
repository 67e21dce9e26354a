#!/bin/bash
# m8trx first-boot bootstrap, rendered by `control` for one dedicated instance.
# Contract (platform docs: B.4 customer-host bootstrap, Path B agent bootstrap):
#  - the customer comes from the instance's Customer= tag read over IMDSv2 (instance metadata
#    tags enabled at launch), and must equal the name control rendered below;
#  - the six secrets are read from SSM under /m8trx/<customer>/ with the instance role;
#  - nothing secret is in this file; fail loud (set -euo pipefail), no idempotency;
#  - all output is tee'd to /var/log/m8trx-agent/first-boot.log for SSM-side debugging;
#  - this file stays under the 16 KB user-data limit (a control test checks it).
set -euo pipefail
install -d -m 0700 /var/log/m8trx-agent
exec > >(tee -a /var/log/m8trx-agent/first-boot.log) 2>&1

M8TRX_EXPECTED_CUSTOMER='@@NAME@@'
M8TRX_TEMPLATE='@@TEMPLATE@@'
M8TRX_HOSTNAME='@@HOSTNAME@@'
IMDS=http://169.254.169.254/latest

echo "m8trx-bootstrap: start ($M8TRX_TEMPLATE template, $M8TRX_HOSTNAME)"

# 1. Identity from IMDSv2 (hop limit 1, tokens required): instance id, region, Customer tag.
TOKEN=$(curl -fsS -X PUT "$IMDS/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
imds() { curl -fsS -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/meta-data/$1"; }
INSTANCE_ID=$(imds instance-id)
REGION=$(imds placement/region)
CUSTOMER=$(imds tags/instance/Customer) \
  || { echo "Customer tag missing or InstanceMetadataTags disabled"; exit 1; }
if [ "$CUSTOMER" != "$M8TRX_EXPECTED_CUSTOMER" ]; then
  echo "Customer tag ($CUSTOMER) does not match this user-data ($M8TRX_EXPECTED_CUSTOMER)"
  exit 1
fi
hostnamectl set-hostname "$INSTANCE_ID"

# 2. Runtime dependencies (idempotent), then wait for the Docker socket (up to 30 s).
export DEBIAN_FRONTEND=noninteractive
apt-get update -y
apt-get install -y --no-install-recommends awscli git jq curl ca-certificates \
  docker.io docker-compose-plugin
if ! command -v tailscale >/dev/null; then
  curl -fsSL https://tailscale.com/install.sh | sh
fi
for _ in $(seq 1 30); do [ -S /var/run/docker.sock ] && break; sleep 1; done
[ -S /var/run/docker.sock ] || { echo "docker socket did not appear in 30 s"; exit 1; }

# 3. The six parameters under /m8trx/<customer>/ (SecureStrings decrypted with the CMK).
param() {
  aws ssm get-parameter --region "$REGION" --name "/m8trx/$CUSTOMER/$1" \
    --with-decryption --query Parameter.Value --output text
}
BRAIN_KEY=$(param brain-key)
BRAIN_CUSTOMER_ID=$(param brain-customer-id)
BRAIN_URL=$(param brain-url)
TS_AUTH_KEY=$(param tailscale-auth-key)
GH_PAT=$(param agent-fetch-pat)
AGENT_UI_PASSWORD=$(param agent-ui-password)

# 4. Join the tailnet under the customer's tag (the key is bound to it).
tailscale up --auth-key="$TS_AUTH_KEY" --hostname="$INSTANCE_ID" \
  --advertise-tags="tag:m8trx-cust-$CUSTOMER" \
  --ssh=false --accept-routes=false --accept-dns=false --reset --timeout=120s
unset TS_AUTH_KEY

# 5. /etc/m8trx/brain.env, 0600 from the start (umask in a subshell, no chmod race).
install -d -m 0700 /etc/m8trx
(
  umask 077
  printf 'BRAIN_URL=%s\nBRAIN_API_KEY=%s\nBRAIN_CUSTOMER_ID=%s\n' \
    "$BRAIN_URL" "$BRAIN_KEY" "$BRAIN_CUSTOMER_ID" > /etc/m8trx/brain.env
)
unset BRAIN_KEY

if [ "$M8TRX_TEMPLATE" != agent ]; then
  # Baseline: the operator supplies the compose stack on :8080; the host is ready.
  unset GH_PAT AGENT_UI_PASSWORD
  echo "m8trx-bootstrap: complete for $CUSTOMER (baseline)"
  exit 0
fi

# 6. Clone the agent repository, then strip the PAT from .git/config.
AGENT_DIR=/opt/m8trx-agent
REPO=github.com/M8trxInfra/M8trxAgent.git
if [ ! -d "$AGENT_DIR/.git" ]; then
  git clone --depth 1 "https://oauth2:${GH_PAT}@${REPO}" "$AGENT_DIR"
fi
git -C "$AGENT_DIR" remote set-url origin "https://${REPO}"
unset GH_PAT

# 7. compose/.env (0700 directory, 0600 file): random database and JWT secrets, allowed
#    hostnames, bcrypt hash of the agent UI password with every $ doubled for compose.
COMPOSE_DIR="$AGENT_DIR/compose"
install -d -m 0700 "$COMPOSE_DIR"
EIP=$(imds public-ipv4 || true)
UI_HASH=$(docker run --rm caddy:2 caddy hash-password --plaintext "$AGENT_UI_PASSWORD")
unset AGENT_UI_PASSWORD
(
  umask 077
  {
    printf 'POSTGRES_USER=m8trx\n'
    printf 'POSTGRES_PASSWORD=%s\n' "$(openssl rand -hex 24)"
    printf 'JWT_SECRET=%s\n' "$(openssl rand -hex 32)"
    printf 'ALLOWED_HOSTNAMES=localhost,%s,%s\n' "$EIP" "$M8TRX_HOSTNAME"
    printf 'AGENT_UI_USER=admin\n'
    printf 'AGENT_UI_HASH=%s\n' "${UI_HASH//\$/\$\$}"
  } > "$COMPOSE_DIR/.env"
)

# 8. Hostname-aware TLS: Caddy block for the customer hostname, :443 on the stack (idempotent).
CADDYFILE="$AGENT_DIR/Caddyfile"
if ! grep -q "^$M8TRX_HOSTNAME {" "$CADDYFILE" 2>/dev/null; then
  {
    printf '{\n\tauto_https disable_redirects\n}\n'
    cat "$CADDYFILE" 2>/dev/null || true
    printf '%s {\n\tbasic_auth {\n\t\tadmin {$AGENT_UI_HASH}\n\t}\n' "$M8TRX_HOSTNAME"
    printf '\treverse_proxy paperclip:3100\n}\n'
  } > "$CADDYFILE.new"
  mv "$CADDYFILE.new" "$CADDYFILE"
fi

# 9. Bring the stack up; first boot ends when Caddy has its certificate.
cd "$AGENT_DIR"
docker compose -f docker-compose.yml -f docker-compose.prod.yml up -d --pull always
echo "m8trx-bootstrap: complete for $CUSTOMER (agent, https://$M8TRX_HOSTNAME)"
