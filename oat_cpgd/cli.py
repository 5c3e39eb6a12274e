"""The command line: the flags of an Args class as tyro parses them, grouped into `--help` sections, and
--dry_run, which prints the resolved flags and where the roles would run."""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys
import typing
from typing import Annotated, TypeVar

import docstring_parser
import tyro
from typing_extensions import Doc

from oat_cpgd.args import SECTIONS, Args, ConfigError, PPOArgs
from oat_cpgd.cluster import cluster_nodes, ray_session, reserve
from oat_cpgd.placement import describe_locally, local_nodes, plan_placement

ArgsT = TypeVar("ArgsT", bound=Args)

OAT_ONLY_FLAGS = {
    "oracle_type": "oat's kind of feedback; every oracle here gives rule-based scalar rewards",
    "pi_buffer_maxlen_per_device": "oat's per-device buffer; here each step's --rollout_batch_size x "
    "--num_samples responses are split evenly over the learner ranks",
}
"""Flags of oat's documented commands that mean nothing here: accepted (with their value) and ignored,
with one line saying why, so oat's commands run unchanged."""


def help_sections(args_cls: type[Args]) -> dict[str, list[str]]:
    """The field names of each `--help` section of `args_cls` (each field's `flag(section, ...)`), in
    the order of args.SECTIONS, fields in field order."""
    sections: dict[str, list[str]] = {section: [] for section in SECTIONS}
    for field in dataclasses.fields(args_cls):
        if "section" not in field.metadata:
            raise TypeError(f"{args_cls.__name__}.{field.name} names no --help section: declare it with flag()")
        sections[field.metadata["section"]].append(field.name)
    return {section: names for section, names in sections.items() if names}


def registry_lists() -> dict[str, str]:
    """The registries' names, which help texts list as `{algorithms}`, `{oracles}`, `{prompt_templates}`."""
    from oat_cpgd.algorithms import algorithm_names
    from oat_cpgd.data import PROMPT_TEMPLATES
    from oat_cpgd.oracles import ORACLES

    return {
        "algorithms": ", ".join(algorithm_names()),
        "oracles": ", ".join(ORACLES),
        "prompt_templates": ", ".join(PROMPT_TEMPLATES),
    }


def field_help(args_cls: type[Args]) -> dict[str, str]:
    """Each field's attribute docstring, a subclass's replacing its parent's (as tyro reads them), with
    the registries' current names filled in."""
    docs: dict[str, str] = {}
    for cls in reversed(args_cls.__mro__[:-1]):  # base classes first; `object` has no fields
        docs.update(
            {p.arg_name: p.description for p in docstring_parser.parse_from_object(cls).params if p.description}
        )
    for placeholder, names in registry_lists().items():
        docs = {name: doc.replace("{" + placeholder + "}", names) for name, doc in docs.items()}
    return docs


def without_oat_only_flags(argv: list[str]) -> list[str]:
    """`argv` less OAT_ONLY_FLAGS (either spelling, `--flag value` or `--flag=value`), each noted on stderr."""
    kept, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        name, has_value, _ = arg.removeprefix("--").replace("-", "_").partition("=")
        if arg.startswith("--") and name in OAT_ONLY_FLAGS:
            if not has_value and rest and not rest[0].startswith("--"):
                rest.pop(0)
            print(f"note: --{name} ignored: {OAT_ONLY_FLAGS[name]}.", file=sys.stderr)
        else:
            kept.append(arg)
    return kept


def sectioned_cli(args_cls: type[ArgsT], default: ArgsT) -> type:
    """`args_cls` as tyro should show it: a dataclass per help section, which tyro boxes separately in
    `--help`, each marked OmitArgPrefixes so its flags keep their flat names (`--learning_rate`, not
    `--training.learning_rate`). Defaults come from `default`; help from `args_cls`'s docstrings."""
    hints = typing.get_type_hints(args_cls, include_extras=True)
    docs = field_help(args_cls)
    sections = []
    for section, names in help_sections(args_cls).items():
        fields = [
            (
                name,
                Annotated[hints[name], Doc(docs.get(name, ""))],
                # A factory: a default such as a dict must not be shared between parses.
                dataclasses.field(default_factory=functools.partial(copy.deepcopy, getattr(default, name))),
            )
            for name in names
        ]
        section_cls = dataclasses.make_dataclass(section, fields)
        sections.append(
            (section, Annotated[section_cls, tyro.conf.OmitArgPrefixes], dataclasses.field(default_factory=section_cls))
        )
    return dataclasses.make_dataclass(args_cls.__name__, sections)


def parse_args(
    args_cls: type[ArgsT], default: ArgsT | None = None, argv: list[str] | None = None, plan=plan_placement
) -> ArgsT:
    """Parse flags into `args_cls`, resolve derived values, and honour --dry_run.

    `plan(nodes, args)` places the roles (oat_cpgd.placement: `plan_placement`, or
    `actors_only_placement` for evaluation). A ConfigError is reported as a one-line usage error
    (exit 2), naming the flags.
    """
    cli_cls = sectioned_cli(args_cls, args_cls() if default is None else default)
    argv = without_oat_only_flags(sys.argv[1:] if argv is None else argv)
    parsed = tyro.cli(cli_cls, args=argv, description=args_cls.__doc__)
    args = args_cls(**{name: value for section in vars(parsed).values() for name, value in vars(section).items()})
    try:
        args.resolve()
        if not args.ray_address:  # a private cluster on this machine: where the roles go is known now
            plan(local_nodes(), args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.dry_run:
        dry_run(args, plan)
        raise SystemExit(0)
    return args


def train_command(args_cls: type[PPOArgs], default: PPOArgs | None = None) -> None:
    """The `run_ppo`/`run_grpo`/`run_cpgd` command: parse the flags, then train. The engines (Ray, vLLM,
    DeepSpeed) are imported after parsing, so `--help`, `--dry_run` and a usage error answer in about
    half the time."""
    args = parse_args(args_cls, default)
    from oat_cpgd.interface import main

    main(args)


def dry_run(args: Args, plan=plan_placement) -> None:
    """The resolved flags as JSON (stdout), then the placement, one line per role (stderr).

    With --ray_address the placement group is booked on that cluster, to see the nodes and GPUs each
    role would get, then released; otherwise it is planned for this machine.
    """
    print(args.to_json())
    try:
        if args.ray_address:
            with ray_session(args.ray_address):
                reservation = reserve(plan(cluster_nodes(), args))
                reservation.release()
                lines = reservation.lines()
        else:
            lines = describe_locally(plan(local_nodes(), args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print("\n".join(lines), file=sys.stderr)
