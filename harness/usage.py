"""`python -m harness --help`, answered before torch and Hydra are imported (seconds on a small
machine): what a user picks from, read from conf/ so it lists what is there."""

import re
import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def answer_help(argv: list) -> None:
    """Print the usage and exit 0 if the command line asks for help (Hydra's --hydra-help is Hydra's)."""
    if any(arg in ("--help", "-h") for arg in argv):
        print(usage())
        sys.exit(0)


HIDDEN_GROUPS = {"hydra", "schema", "experiment"}  # Hydra's own, the typed schemas, the presets (listed apart)


def usage() -> str:
    """`--help`: the groups a user picks from and their choices, the study presets, the -m rule;
    read from conf/, so it lists what is there."""
    groups = sorted(d for d in CONF_DIR.iterdir() if d.is_dir() and d.name not in HIDDEN_GROUPS)
    lines = ["usage: python -m harness [-m] [GROUP=CHOICE ...] [KEY=VALUE ...]", "",
             "One job; with -m, a sweep of one job per combination of comma-separated values",
             "(-m model.depth=8,20,56 model.residual=true,false is 6 jobs). Without -m a value with a comma is refused.",
             "", "Config groups (GROUP=CHOICE):"]
    lines += [f"  {g.name}: {', '.join(sorted(f.stem for f in g.glob('*.yaml')))}" for g in groups]
    lines += ["", "Study presets (-m +experiment=NAME; each sweeps its axes over 3 seeds, a value on the command "
              "line narrows an axis):"]
    lines += [f"  {f.stem}: {_first_sentence(f)}" for f in sorted((CONF_DIR / "experiment").glob("*.yaml"))]
    lines += ["", "Every key:   python -m harness --cfg job [OVERRIDES]   (the composed config; runs nothing)",
              "Hydra's own flags (--multirun, --cfg, --info, shell completion): python -m harness --hydra-help",
              "More: docs/configuration.md"]
    return "\n".join(lines)


def _first_sentence(preset: Path) -> str:
    """The first sentence of a preset's opening comment (a full stop before a capital ends it:
    not `et al. 2016` nor `Fig. 6`)."""
    comment = []
    for line in preset.read_text().splitlines()[1:]:
        if not line.startswith("#") or line.lstrip("# ").startswith("python -m"):
            break
        comment.append(line.lstrip("# ").strip())
    text = " ".join(comment)
    return re.split(r"\. (?=[A-Z])", text)[0].rstrip(".") + "." if text else ""
