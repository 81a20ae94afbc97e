package main

import (
	"encoding/json"
	"os"
)

// writeOutputs writes -json and -report.
func writeOutputs(cfg *config, r *result) error {
	if cfg.jsonOut != "" {
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(cfg.jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if cfg.reportOut != "" {
		return writeReport(cfg.reportOut, r)
	}
	return nil
}
