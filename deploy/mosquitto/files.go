// Package mosquitto holds the configuration of OTAflow's production MQTT broker, Mosquitto
// 2.0.11 with its dynamic-security plugin: mosquitto.conf, the devices' topic rules (acl) and
// the start script (start.sh). docker-compose.yml mounts these files into the broker's
// container; internal/dev/localstack runs the very same files natively, embedded here so that
// every program built from this repository carries them.
package mosquitto

import "embed"

// Names of the configuration files, as they sit in this directory and in the broker's
// configuration directory (/mosquitto/config in the container).
const (
	ConfFile  = "mosquitto.conf"
	ACLFile   = "acl"
	StartFile = "start.sh"
)

// Files are the configuration files, ConfFile, ACLFile and StartFile, at the root.
//
//go:embed mosquitto.conf acl start.sh
var Files embed.FS

// Names lists the configuration files, every one that Files holds.
func Names() []string { return []string{ConfFile, ACLFile, StartFile} }

// Version is the Mosquitto version of the compose file's image and of the broker the tests run
// natively (Debian's package).
const Version = "2.0.11"

// Paths inside the container that a native run substitutes.
const (
	// ConfigDir is where the configuration files are mounted.
	ConfigDir = "/mosquitto/config/"
	// DataDir holds the persistence file and the dynamic-security plugin's accounts.
	DataDir = "/mosquitto/data/"
	// PluginPath is the dynamic-security plugin in the eclipse-mosquitto image.
	PluginPath = "/usr/lib/mosquitto_dynamic_security.so"
	// Listener is the listener line of mosquitto.conf.
	Listener = "listener 1883 0.0.0.0"
	// Port is the port the container listens on.
	Port = 1883
)
