"""The command-line options of the protocol's experiment stages, the same in every suite (torch-free,
so a suite's parser builds without importing the compute)."""

from __future__ import annotations

from typing import Any

LEARNED_METHODS = (
    "lines",  # task arithmetic + LiNeS (β on val, α by the rule): the reference
    "fisher",
    "adamerging_task",
    "adamerging_layer",
    "atlas",
    "ensemble",
)


def unpack_section(section: Any) -> list[str]:
    """A params.yaml section as DVC's dict unpacking writes it on a command line: ``--key value``,
    lists as ``--key a b``, true booleans as ``--key`` (false ones left out)."""
    out: list[str] = []
    for k, v in section.items():
        if isinstance(v, bool):
            if v:
                out.append(f"--{k}")
        elif isinstance(v, list):
            out += [f"--{k}", *map(str, v)]
        else:
            out += [f"--{k}", str(v)]
    return out


def add_schedules_options(p: Any) -> None:
    """The ``schedules`` section's command-line options (an ``argparse`` parser), the same in
    every suite's ``schedules`` stage; the parsed namespace (``vars``) is :func:`lines.protocol.schedules.run_schedules`'s
    ``cfg``."""
    p.add_argument("--specs", nargs="+", required=True, help="NAME[:k=v,...] schedules")
    p.add_argument("--budget", type=int, required=True, help="val evaluations per schedule")
    p.add_argument("--beta_max", type=float, required=True, help="merging: β ∈ [0, beta_max]")
    p.add_argument(
        "--alpha_mults",
        nargs="+",
        type=float,
        default=[1.0],
        help="merging: α = the rule's α × each (searched within the budget; 1: the rule)",
    )
    p.add_argument("--methods", nargs="*", default=[], help="merges to rescale")
    p.add_argument("--edit_tasks", nargs="*", default=[], help="tasks to edit")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--bootstrap_seed", type=int, default=0)


def add_learned_options(p: Any) -> None:
    """The ``learned`` section's command-line options (an ``argparse`` parser), the same in every
    suite's ``learned`` stage; the parsed namespace (``vars``) is :func:`lines.protocol.baselines.run_baselines`'s ``cfg``."""
    p.add_argument("--methods", nargs="*", default=[], choices=list(LEARNED_METHODS))
    p.add_argument("--betas", nargs="+", type=float, required=True, help="TA + LiNeS β grid")
    p.add_argument("--fisher_examples", type=int, default=64, help="inputs per task (val)")
    p.add_argument("--fisher_labels", default="sampled", choices=["sampled", "true"])
    p.add_argument("--fisher_floor", type=float, default=1e-6)
    p.add_argument("--steps", type=int, default=100, help="AdaMerging / aTLAS Adam steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch_size", type=int, default=16, help="examples per task and step")
    p.add_argument("--init", type=float, default=0.3, help="initial coefficients")
    p.add_argument("--adamerging_inputs", default="test", choices=["test", "val"])
    p.add_argument("--ensemble_combine", default="logits", choices=["logits", "probs"])
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--bootstrap_seed", type=int, default=0)
