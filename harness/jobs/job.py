"""One job as the harness knows it: where Hydra put it (JobInfo), what it trains (a hash of its
config, its code) and the config it started with, which a resume compares with today's.
Apart from the Hydra app (harness.app), so that harness.runs composes and compares configs
without importing what trains them."""

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from harness.config import COMPOSITION_ERRORS, one_line, plain
from harness.errors import ConfigError
from harness.jobs.folder import JobFolder, JobRecord
from harness.tracking.store import flatten, git_state

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
CHANGED_ENV = "HARNESS_RESUME_CHANGED"  # set by `harness.runs resume --allow-changed`: what changed since

# cached resolvers are evaluated once per config, and Hydra copies the cache into every job
OmegaConf.register_new_resolver("harness.root", lambda: str(PROJECT_ROOT), replace=True)
OmegaConf.register_new_resolver(
    "harness.stamp", lambda: time.strftime("%Y-%m-%d/%H-%M-%S-") + secrets.token_hex(3), use_cache=True, replace=True)


@dataclass
class JobInfo:
    """Where Hydra put this job: output folder, sweep folder (None for a single run), overrides,
    the config file chosen for each group, and its MLflow run once it has one.

    A job folder that already has a job.json is a job being resumed (harness.runs resume, or
    a requeued cluster job): its sweep, number and run come from there, and what it started
    with (`recorded`: JobInfo.state), which the resume compares with today's."""

    output_dir: Path
    log_file: Path
    sweep_dir: Path | None
    num: int
    overrides: list
    choices: dict = field(default_factory=dict)
    run_id: str | None = None
    recorded: dict | None = None
    changed: str | None = None  # what changed since the job started, when it resumes anyway

    @property
    def folder(self) -> JobFolder:
        return JobFolder(self.output_dir)

    @classmethod
    def from_hydra(cls) -> "JobInfo":
        hc = HydraConfig.get()
        output_dir = Path(hc.runtime.output_dir)
        in_sweep = hc.mode == RunMode.MULTIRUN
        choices = {group: choice for group, choice in hc.runtime.choices.items()
                   if choice is not None and not group.startswith(("hydra/", "schema/"))}
        job = cls(output_dir, output_dir / f"{hc.job.name}.log", Path(hc.sweep.dir) if in_sweep else None,
                  hc.job.num if in_sweep else 0, list(hc.overrides.task), choices)
        if job.folder.has_record():
            saved = job.folder.read()
            job.sweep_dir, job.num, job.overrides, job.run_id = saved.sweep_dir, saved.num, saved.overrides, saved.run_id
            job.recorded = saved.recorded
        return job

    @staticmethod
    def state(cfg) -> dict:
        """What a job trains: a hash of its resolved config, and the checkout's git commit and
        dirty state (`unknown` outside git)."""
        code = git_state(Path(cfg.paths.root))
        return {"config_sha256": config_hash(cfg), "git_commit": code["git_commit"],
                "git_dirty": code.get("git_dirty", "unknown")}

    @staticmethod
    def started_config(folder: Path, today):
        """The config the job in `folder` started with (its .hydra/config.yaml), typed by today's
        schema (`today`: its config composed now); ConfigError if today's conf/ cannot hold it."""
        saved_config = JobFolder(folder).saved_config
        try:
            saved = OmegaConf.load(saved_config)
            cfg = OmegaConf.merge(today, saved)
        except (OSError, *COMPOSITION_ERRORS) as e:
            raise ConfigError(f"{saved_config} cannot be trained with today's conf/: "
                              f"{getattr(e, 'strerror', None) or one_line(e)}") from None
        if flatten(cfg).keys() != flatten(saved).keys():  # a key today's conf/ added is not the job's
            raise ConfigError(f"{saved_config} cannot be trained with today's conf/, which adds "
                              "keys: resume with the conf/ the job started with")
        return cfg

    def save(self, tracking) -> None:
        """`tracking`: the config's store, for harness.runs sync."""
        self.folder.write(JobRecord(self.sweep_dir, self.num, self.overrides, self.run_id, tracking.uri,
                                    tracking.experiment, self.recorded))


def config_hash(cfg) -> str:
    return hashlib.sha256(json.dumps(plain(cfg), sort_keys=True).encode()).hexdigest()


def compose_today(overrides: list):
    """The config a relaunch with these overrides composes from today's conf/."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=overrides)
    except (*COMPOSITION_ERRORS, ValueError) as e:
        raise ConfigError(one_line(e)) from None
