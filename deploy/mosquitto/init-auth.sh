#!/bin/sh
# Run once before the broker starts (the mqtt-auth-init service, in the broker's own image):
# writes, into the volume the broker reads, the service accounts' password file (argon2id
# hashes made by the plugin's pw tool) and the password of the broker's database role.
set -eu
: "${OTAFLOW_WORKER_MQTT_PASSWORD:?set OTAFLOW_WORKER_MQTT_PASSWORD}"
: "${OTAFLOW_BRIDGE_MQTT_PASSWORD:?set OTAFLOW_BRIDGE_MQTT_PASSWORD}"
: "${MQTT_AUTH_DB_PASSWORD:?set MQTT_AUTH_DB_PASSWORD}"

out=/mosquitto/auth
mkdir -p "$out/conf.d"

hash() {
	# Same parameters as internal/credential: argon2id, m=8192 KiB, t=1, p=1, 16-byte salt,
	# 32-byte key.
	h=$(/mosquitto/pw -h argon2id -m 8192 -i 1 -pl 1 -s 16 -l 32 -p "$1")
	case $h in
	'$argon2id$'*) printf '%s' "$h" ;;
	*) echo "init-auth: pw failed: $h" >&2; exit 1 ;;
	esac
}

worker=$(hash "$OTAFLOW_WORKER_MQTT_PASSWORD")
bridge=$(hash "$OTAFLOW_BRIDGE_MQTT_PASSWORD")
printf 'otaflow-worker:%s\notaflow-bridge:%s\n' "$worker" "$bridge" >"$out/passwords.new"
printf 'auth_opt_pg_password %s\n' "$MQTT_AUTH_DB_PASSWORD" >"$out/conf.d/pg-password.conf.new"
chmod 0640 "$out/passwords.new" "$out/conf.d/pg-password.conf.new"
# Replace both files only once both are complete.
mv "$out/passwords.new" "$out/passwords"
mv "$out/conf.d/pg-password.conf.new" "$out/conf.d/pg-password.conf"
chown -R mosquitto:mosquitto "$out" 2>/dev/null || true
echo "init-auth: wrote $out/passwords and $out/conf.d/pg-password.conf"
