#!/bin/sh
# Run by the postgres image on its first start (/docker-entrypoint-initdb.d): gives the MQTT
# broker its role and functions (mqtt-auth.sql) in the OTAflow database.
set -eu
: "${MQTT_AUTH_DB_PASSWORD:?set MQTT_AUTH_DB_PASSWORD, the password of the broker's database role mqtt_auth}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
	-v mqtt_auth_password="$MQTT_AUTH_DB_PASSWORD" -f /otaflow/mqtt-auth.sql
