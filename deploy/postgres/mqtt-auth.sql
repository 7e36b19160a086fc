-- What the MQTT broker (Mosquitto with mosquitto-go-auth's postgres backend, see
-- deploy/mosquitto/mosquitto.conf) may do in the OTAflow database: call two functions, as the
-- role mqtt_auth, to check a device's secret and to list the topics a device may use. It can
-- read nothing else.
--
-- Run once, by a superuser, in the OTAflow database (the postgres image runs it through
-- 10-mqtt-auth.sh on its first start), with the psql variable mqtt_auth_password set:
--   psql -v ON_ERROR_STOP=1 -v mqtt_auth_password=... -d otaflow -f mqtt-auth.sql
--
-- Topics follow PROTOCOL.md (internal/protocol): device {id} subscribes only to
-- devices/{id}/ota/command and publishes only to devices/{id}/ota/progress and
-- devices/{id}/status. The broker replaces %u with the connecting username, the device ID.
-- Access codes are Mosquitto's: 1 read (a message delivered), 2 write (publish),
-- 4 subscribe.
--
-- The service accounts otaflow-worker and otaflow-bridge authenticate against the broker's
-- password file instead; their names are refused here, so that a device registered under
-- such a name can never take their rights.

CREATE ROLE mqtt_auth LOGIN PASSWORD :'mqtt_auth_password';
CREATE SCHEMA otaflow_mqtt;

-- public.devices is created later, by the OTAflow store's migrations when the worker or the
-- bridge first starts: check the function bodies at their first call, not now.
SET check_function_bodies = off;

-- device_secret_hash returns the argon2id hash (internal/credential) of an enabled device's
-- secret, or NULL: the broker then refuses the connection.
CREATE FUNCTION otaflow_mqtt.device_secret_hash(username text) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT d.secret_hash FROM public.devices d
    WHERE d.id = username AND NOT d.disabled AND d.secret_hash <> ''
      AND username NOT IN ('otaflow-worker', 'otaflow-bridge')
$$;

-- device_acl returns the topic patterns an enabled device may use with the access code given.
CREATE FUNCTION otaflow_mqtt.device_acl(username text, access integer) RETURNS SETOF text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT acl.topic
    FROM (VALUES ('devices/%u/ota/command', 1),
                 ('devices/%u/ota/command', 4),
                 ('devices/%u/ota/progress', 2),
                 ('devices/%u/status', 2)) AS acl(topic, code)
    WHERE acl.code = access
      AND username NOT IN ('otaflow-worker', 'otaflow-bridge')
      AND EXISTS (SELECT 1 FROM public.devices d WHERE d.id = username AND NOT d.disabled)
$$;

REVOKE ALL ON SCHEMA otaflow_mqtt FROM PUBLIC;
REVOKE ALL ON FUNCTION otaflow_mqtt.device_secret_hash(text), otaflow_mqtt.device_acl(text, integer) FROM PUBLIC;
GRANT USAGE ON SCHEMA otaflow_mqtt TO mqtt_auth;
GRANT EXECUTE ON FUNCTION otaflow_mqtt.device_secret_hash(text), otaflow_mqtt.device_acl(text, integer) TO mqtt_auth;
