"""What is measured on a trained run: evaluation, calibration, latency, profiles, the query table, plots."""
