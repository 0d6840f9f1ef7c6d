"""A job's life and its launching: the job (job), its folder's files (folder), how it ended
(outcome), how it is told to stop (signals), its checkpoint, the sweep's parent run, launchers
(joblib, SLURM), the processes that hold a job, MPS for concurrent jobs on one GPU."""
