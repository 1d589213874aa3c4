"""Ray plumbing and the job frame, nothing domain-specific: connecting (`connect`), node-visibility checks
(`shared_paths`), live Prometheus metrics (`live`), job policy (`preflight`) and the one frame every cluster
job opens (`job.launch_job`)."""
