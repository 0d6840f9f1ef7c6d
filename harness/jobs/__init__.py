"""A job's life and its launching: the sweep's parent run, launchers (joblib, SLURM),
checkpoints, the processes that hold a job, MPS for concurrent jobs on one GPU."""
