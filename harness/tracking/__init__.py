"""Everything said to MLflow: experiments, runs, batched metrics, tags, redaction of
credentials, and the job log."""
