package main

import (
	"encoding/json"
	"fmt"
	"os"
)

// writeOutputs writes -json, -report and -hgrm.
func writeOutputs(cfg *config, r *result) error {
	if cfg.jsonOut != "" {
		if err := writeJSON(cfg.jsonOut, r); err != nil {
			return err
		}
	}
	if cfg.reportOut != "" {
		if err := writeReport(cfg.reportOut, r); err != nil {
			return err
		}
	}
	if cfg.hgrmOut != "" {
		return writeHgrm(cfg.hgrmOut, r.Histogram)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// writeHgrm writes the latency histogram (µs, reported in ms) in
// HdrHistogram's percentile distribution format, the one wrk2 prints and
// HdrHistogram's plotter reads.
func writeHgrm(path, encoded string) error {
	h, err := decodeHist(encoded)
	if err != nil {
		return fmt.Errorf("-hgrm: no histogram: %v", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := h.PercentilesPrint(f, 5, 1000); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
