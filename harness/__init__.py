"""The harness, in layers (each package's docstring says what belongs there):

- app.py, runs.py, bench.py, bench_store.py: the command lines (python -m harness, harness.runs, ...);
- config: what a config may say (schemas, rules) and the objects it builds;
- jobs: a job's life and its launching (sweeps, launchers, checkpoints, processes, MPS);
- training: the training step and what feeds it; data: the datasets; models: the model families;
- probes: measurements taken during training;
- tracking: everything said to MLflow;
- contract.py: the names both the harness and analysis use; errors.py, files.py: shared basics.
"""
