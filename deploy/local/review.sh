#!/usr/bin/env bash
# The review web app on the local stack, after deploy/local/quickstart.sh stored some captions:
# makes a local reviewer (user "analyst", a random password printed once, its Argon2id hash in
# deploy/local/.state/review.toml) and serves `blip2idc review` on http://localhost:8090/ until Ctrl-C.
# Plain-HTTP cookies are allowed here only because the app listens on 127.0.0.1 (browsers also keep
# secure cookies for http://localhost; this keeps other local names working).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
set -a; . deploy/local/env; set +a
bin="${CARGO_TARGET_DIR:-target}/debug"
state=deploy/local/.state
mkdir -p "$state"
if [ ! -f "$state/review.toml" ]; then
  password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')"
  hash="$(printf '%s\n' "$password" | "$bin/blip2idc" review hash-password)"
  cat > "$state/review.toml" <<TOML
[model]
checkpoint = "models/synthetic/base"

[review]
listen = "127.0.0.1:8090"
secure_cookies = false

[[review.users]]
name = "analyst"
role = "admin"
password_hash = "$hash"
TOML
  echo "review app user: analyst / $password (kept only as a hash in $state/review.toml)"
fi
exec "$bin/blip2idc" review --config "$state/review.toml"
