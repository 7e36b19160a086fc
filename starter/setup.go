package main

import (
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/setup"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlsflags"
)

func setupCommand(e *appEnv) *cli.Command {
	return &cli.Command{
		Name:      "setup",
		Usage:     "prepare real servers for OTAflow: Temporal namespace, search attributes, PostgreSQL schema, broker accounts, retention cleanup",
		UsageText: "starter [--temporal-address A] [--temporal-namespace N] --database-url U [--mqtt-admin-url M] setup [--retention D] [--cleanup-every D] [--wait D]",
		Description: "Run once before the worker and the bridge start on new servers, and again after an upgrade\n" +
			"of OTAflow; it is safe to run any number of times. In order, each step doing only what is\n" +
			"missing and saying what it did:\n" +
			"  namespace          create the Temporal namespace (--temporal-namespace) with --retention;\n" +
			"                     given explicitly, --retention also sets an existing namespace's retention\n" +
			"  search attributes  register " + fmt.Sprint(ota.SearchAttributeNames) + " as Keyword\n" +
			"  database           apply OTAflow's PostgreSQL migrations (--database-url)\n" +
			"  broker             with --mqtt-admin-url (MQTT_ADMIN_URL): the production broker's access rules,\n" +
			"                     the worker's and the bridge's accounts (passwords from " + brokeraccounts.EnvWorkerPassword + "\n" +
			"                     and " + brokeraccounts.EnvBridgePassword + "), and the devices' accounts disabled as the registry says\n" +
			"  retention cleanup  create or update the Temporal Schedule " + ota.RetentionCleanupScheduleID + ", which runs the\n" +
			"                     retention cleanup every --cleanup-every (the policy: starter retention)\n" +
			"A Temporal server that does not answer yet (one still starting) is waited for, up to --wait.\n" +
			"Exit codes: 0 done (changed or not), 1 a step failed (the message names it).",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "retention", Value: setup.DefaultRetention,
				Usage: "how long the namespace keeps closed workflows: a namespace the setup creates gets it; an existing one keeps its own unless the flag is given"},
			&cli.DurationFlag{Name: "cleanup-every", Value: ota.DefaultCleanupInterval,
				Usage: "how often the retention cleanup runs (its schedule's interval)"},
			&cli.DurationFlag{Name: "wait", Value: setup.DefaultWait, Usage: "wait at most this `DURATION` for the Temporal frontend to answer"},
		},
		Before: func(cCtx *cli.Context) error {
			if cCtx.Args().Present() {
				return usageErrorf(cCtx, "unexpected argument %q", cCtx.Args().First())
			}
			if cCtx.String(flagDatabaseURL) == "" {
				return usageErrorf(cCtx, "setup applies the PostgreSQL migrations: set --%s (before the command) or DATABASE_URL", flagDatabaseURL)
			}
			if r := cCtx.Duration("retention"); r < 24*time.Hour {
				return usageErrorf(cCtx, "--retention must be at least 24h (Temporal's minimum), not %s", r)
			}
			if d := cCtx.Duration("cleanup-every"); d < time.Minute || d > 7*24*time.Hour {
				return usageErrorf(cCtx, "--cleanup-every must be 1m to 168h, not %s", d)
			}
			if cCtx.Duration("wait") <= 0 {
				return usageErrorf(cCtx, "--wait must be positive")
			}
			return nil
		},
		Action: e.setupAction,
	}
}

func (e *appEnv) setupAction(cCtx *cli.Context) error {
	tlsCfg, err := tlsflags.Temporal(cCtx)
	if err != nil {
		return usageErrorf(cCtx, "%v", err)
	}
	mqttTLS, err := tlsflags.MQTT(cCtx)
	if err != nil {
		return usageErrorf(cCtx, "%v", err)
	}
	_, err = setup.Run(cCtx.Context, setup.Config{
		TemporalAddress:    cCtx.String(flagTemporalAddress),
		TemporalNamespace:  cCtx.String(flagTemporalNamespace),
		TemporalTLS:        tlsCfg,
		Retention:          cCtx.Duration("retention"),
		SetRetention:       cCtx.IsSet("retention"),
		CleanupInterval:    cCtx.Duration("cleanup-every"),
		DatabaseURL:        cCtx.String(flagDatabaseURL),
		Wait:               cCtx.Duration("wait"),
		MQTTAdminURL:       cCtx.String(flagMQTTAdminURL),
		MQTTTLS:            mqttTLS,
		WorkerMQTTPassword: os.Getenv(brokeraccounts.EnvWorkerPassword),
		BridgeMQTTPassword: os.Getenv(brokeraccounts.EnvBridgePassword),
		Out:                e.out,
	}, setup.DefaultSteps())
	if err != nil && cCtx.Context.Err() != nil {
		return cli.Exit("setup interrupted: run it again to finish", exitInterrupted)
	}
	return err
}
