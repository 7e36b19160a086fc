#!/bin/sh
# Starts Mosquitto with OTAflow's configuration: docker-compose.yml runs it in the
# eclipse-mosquitto image, internal/dev/localstack runs it natively (MOSQUITTO_CONF then names its
# copy of mosquitto.conf).
#
# On the first start, when the dynamic-security plugin's file (plugin_opt_config_file in
# mosquitto.conf) does not exist yet, it creates it with one account: the administrator
# OTAFLOW_MQTT_ADMIN_USER (default otaflow-admin) with the password
# OTAFLOW_MQTT_ADMIN_PASSWORD, which OTAflow uses to provision every other account
# (`starter setup`, `starter devices ...`, MQTT_ADMIN_URL). Later starts keep the file, and
# the accounts in it, whatever these variables say.
set -eu

conf=${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}
accounts=$(sed -n 's/^plugin_opt_config_file[[:space:]]\{1,\}//p' "$conf")
if [ -z "$accounts" ]; then
	echo "start.sh: $conf names no plugin_opt_config_file" >&2
	exit 1
fi

if [ ! -e "$accounts" ]; then
	: "${OTAFLOW_MQTT_ADMIN_PASSWORD:?set OTAFLOW_MQTT_ADMIN_PASSWORD, the password of the broker administrator created on the first start}"
	admin=${OTAFLOW_MQTT_ADMIN_USER:-otaflow-admin}
	# Only hashes are written, but nobody else needs to read them.
	umask 077
	mosquitto_ctrl dynsec init "$accounts" "$admin" "$OTAFLOW_MQTT_ADMIN_PASSWORD" >/dev/null
	# Run as root (the image), Mosquitto drops to the mosquitto user before it loads the file.
	if [ "$(id -u)" = 0 ]; then
		chown mosquitto:mosquitto "$accounts"
	fi
	echo "start.sh: created the broker administrator $admin in $accounts"
fi

exec mosquitto -c "$conf"
