#!/bin/sh
# Run once the Temporal server answers (the temporal-setup service, in temporalio/admin-tools):
# registers OTAflow's custom search attributes, workflows.SearchAttributeNames, as Keyword in
# the namespace the worker uses. Registering them again is harmless.
set -eu
ns=${TEMPORAL_NAMESPACE:-default}
: "${TEMPORAL_ADDRESS:?set TEMPORAL_ADDRESS}"

# The server creates the namespace just after it starts answering.
tries=0
until temporal operator search-attribute list --namespace "$ns" >/dev/null 2>&1; do
	tries=$((tries + 1))
	if [ "$tries" -ge 120 ]; then
		echo "register-search-attributes: namespace $ns not found at $TEMPORAL_ADDRESS after 120s" >&2
		exit 1
	fi
	sleep 1
done

temporal operator search-attribute create --namespace "$ns" \
	--name OtaDevice --type Keyword \
	--name OtaTargetVersion --type Keyword \
	--name OtaType --type Keyword \
	--name OtaState --type Keyword \
	--name OtaRollout --type Keyword
temporal operator search-attribute list --namespace "$ns"
