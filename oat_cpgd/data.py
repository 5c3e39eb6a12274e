"""Prompt data: load a split, render prompts, drop over-long ones and unusable references, keep the references.

`--prompt_data` may be a Hugging Face dataset name, a folder written by
`datasets.save_to_disk`, a folder of data files (each file a split named by its stem,
e.g. gsm8k/train.jsonl and gsm8k/test.jsonl) or a single .jsonl/.json/.parquet file
(split `train`). Split names may carry slices such as `train[:90%]`.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

logger = logging.getLogger(__name__)

DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json", ".parquet": "parquet"}

R1_ZERO_PREFIX = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. "
    "The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\nUser: "
)

PROMPT_TEMPLATES = {
    "none": "{input}",
    # DeepSeek-R1-Zero style, as used by oat's R1-zero recipes.
    "r1_zero": R1_ZERO_PREFIX + "{input}\nAssistant: <think>",
    # TinyZero's CountDown prompt, built from the `nums` and `target` columns.
    "countdown": R1_ZERO_PREFIX + "Using the numbers {nums}, create an equation that equals {target}. "
    "You can use basic arithmetic operations (+, -, *, /) and each number can only be used once. "
    "Show your work in <think> </think> tags. And return the final answer in <answer> </answer> tags, "
    "for example <answer> (1 + 2) / 3 </answer>.\nAssistant: Let me solve this step by step.\n<think>",
    # Qwen2.5-Math style instruction for \boxed{} answers (MATH, DeepScaleR, AIME, AMC).
    "boxed": "{input}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    # `--env python`: the tool as the environment parses it (a turn ending in a ```python block runs it),
    # shown by an example, and ReTool's \boxed{} answer (verl recipe/retool/retool.py) for --oracle.
    "python_tool": "{input}\n\nYou can run Python code. Write it in a block like this one, which ends your turn:\n"
    "```python\nprint(2 + 3)\n```\n"
    "What the code prints comes back in an ```output block, so print what you need to see. Reason step by step, "
    "use code for the calculations, and put your final answer within \\boxed{{}}.",
}


class DataError(ValueError):
    """Unusable prompt data; the message says what exists."""


@dataclass
class PromptSet:
    """Rendered prompts with their references, in dataset order."""

    indices: list[int] = field(default_factory=list)
    """Row index in the loaded split, so a run can record exactly what it drew."""
    prompts: list[str] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)
    references: list[Any] = field(default_factory=list)
    num_dropped: int = 0
    """Prompts dropped for exceeding --prompt_max_length."""
    num_bad_references: int = 0
    """Rows dropped because the oracle cannot use their reference (`RewardOracle.check_reference`)."""

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def total_dropped(self) -> int:
        """Rows dropped for any reason (not those past `max_items`)."""
        return self.num_dropped + self.num_bad_references


SHOWN_BAD_REFERENCES = 5
"""How many rejected references the warning shows."""


def _accepts(check_reference: Callable[[Any], bool], reference: Any) -> tuple[bool, str]:
    """The check's verdict, and why it said no: a raising check rejects the reference."""
    try:
        return bool(check_reference(reference)), ""
    except Exception as error:
        return False, f" ({type(error).__name__}: {error})"


def _shorten(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _data_files_in(folder: Path) -> dict[str, str]:
    files = {}
    for path in sorted(folder.iterdir()):
        for suffix, _ in DATA_FILE_BUILDERS.items():
            if path.name.endswith(suffix):
                files[path.name[: -len(suffix)]] = str(path)
    return files


def _builder_for(files: dict[str, str]) -> str:
    kinds = {builder for f in files.values() for suffix, builder in DATA_FILE_BUILDERS.items() if f.endswith(suffix)}
    if len(kinds) != 1:
        raise DataError(f"cannot mix data file kinds in one source: {sorted(files.values())}")
    return kinds.pop()


def load_split(source: str, split: str) -> datasets.Dataset:
    """Load one split (slices allowed) of `source`; unknown splits name the ones that exist."""
    path = Path(source).expanduser()
    base_split = re.sub(r"\[.*\]$", "", split)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
        saved = datasets.load_from_disk(str(path))
        if isinstance(saved, datasets.Dataset):
            saved = datasets.DatasetDict({"train": saved})
        if base_split not in saved:
            raise DataError(f"split {base_split!r} not in {source}; splits: {sorted(saved)}")
        if base_split == split:
            return saved[split]
        return _slice(saved[base_split], split)
    if path.is_dir() or path.is_file():
        files = _data_files_in(path) if path.is_dir() else {"train": str(path)}
        if not files:
            raise DataError(f"no {'/'.join(DATA_FILE_BUILDERS)} files in {source}")
        if base_split not in files:
            raise DataError(f"split {base_split!r} not in {source}; splits: {sorted(files)}")
        # Only this split's file: loading them all would force the first file's columns on every split.
        return datasets.load_dataset(_builder_for(files), data_files={base_split: files[base_split]}, split=split)
    if path.suffix or source.startswith((".", "/", "~")):
        raise DataError(f"prompt data {source!r} does not exist")
    return datasets.load_dataset(source, split=split)  # a Hugging Face dataset name


def _slice(dataset: datasets.Dataset, split: str) -> datasets.Dataset:
    """Apply a `name[a:b]` slice (ints or percents) to a dataset loaded from disk."""
    instruction = datasets.ReadInstruction.from_spec(split)
    (absolute,) = instruction.to_absolute({re.sub(r"\[.*\]$", "", split): len(dataset)})
    return dataset.select(range(absolute.from_, absolute.to))


def render_template(template: str, row: dict, input_key: str) -> str:
    """Fill a named or literal template with the row's columns; `{input}` is `row[input_key]`."""
    fmt = PROMPT_TEMPLATES.get(template, template)
    fields = dict(row)
    if input_key in row:
        fields["input"] = row[input_key]
    try:
        return fmt.format(**fields)
    except KeyError as err:
        missing = err.args[0]
        what = (
            f"--input_key {input_key!r}" if missing == "input" else f"column {missing!r} (used by the prompt template)"
        )
        raise DataError(f"{what} not found; columns: {sorted(row)}") from None


def template_fields(template: str) -> set[str]:
    fmt = PROMPT_TEMPLATES.get(template, template)
    return {name for _, name, _, _ in string.Formatter().parse(fmt) if name}


def build_prompts(
    dataset: datasets.Dataset,
    tokenizer,
    *,
    input_key: str,
    output_key: str,
    prompt_template: str = "none",
    apply_chat_template: bool = False,
    prompt_max_length: int = 1024,
    max_items: int | None = None,
    check_reference: Callable[[Any], bool] | None = None,
) -> PromptSet:
    """Render every row, drop (and count) prompts over `prompt_max_length` tokens, keep `max_items`.

    `check_reference` (e.g. the run's `oracle.check_reference`) says whether the oracle can use
    a row's reference; rows it rejects (or raises on) are dropped, counted in `num_bad_references`
    and the first few shown in a warning, rather than scoring 0 whenever they are drawn.
    """
    columns = list(dataset.column_names)
    needed = {input_key if f == "input" else f for f in template_fields(prompt_template)}
    output_keys = [k.strip() for k in output_key.split(",")]
    for key in sorted(needed) + output_keys:
        if key not in columns:
            flag = (
                "--output_key" if key in output_keys else ("--input_key" if key == input_key else "--prompt_template")
            )
            raise DataError(f"{flag} names column {key!r}, which the data does not have; columns: {columns}")

    prompts = PromptSet()
    bad_references: list[str] = []
    for index, row in enumerate(dataset):
        reference = row[output_keys[0]] if len(output_keys) == 1 else {k: row[k] for k in output_keys}
        if check_reference is not None:
            accepted, reason = _accepts(check_reference, reference)
            if not accepted:
                prompts.num_bad_references += 1
                if len(bad_references) < SHOWN_BAD_REFERENCES:
                    bad_references.append(f"row {index}: {_shorten(reference)}{reason}")
                continue
        text = render_template(prompt_template, row, input_key)
        if apply_chat_template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # the template already has them
        else:
            ids = tokenizer(text)["input_ids"]
        if len(ids) > prompt_max_length:
            prompts.num_dropped += 1
            continue
        prompts.indices.append(index)
        prompts.prompts.append(text)
        prompts.prompt_ids.append(list(ids))
        prompts.references.append(reference)
        if max_items is not None and len(prompts) >= max_items:
            break
    if prompts.num_dropped:
        logger.warning(
            "dropped %d prompts longer than --prompt_max_length %d tokens", prompts.num_dropped, prompt_max_length
        )
    if prompts.num_bad_references:
        logger.warning(
            "dropped %d rows whose reference (--output_key %s) the oracle cannot use; the first: %s",
            prompts.num_bad_references,
            output_key,
            "; ".join(bad_references),
        )
    if not prompts.prompts:
        if prompts.num_dropped and not prompts.num_bad_references:
            reason = f"all {prompts.num_dropped} rows exceed --prompt_max_length {prompt_max_length}"
        elif prompts.num_bad_references:
            reason = (
                f"the oracle cannot use the reference (--output_key {output_key}) of {prompts.num_bad_references} "
                f"rows, e.g. {bad_references[0]}, and {prompts.num_dropped} exceed --prompt_max_length "
                f"{prompt_max_length}"
            )
        else:
            reason = "the data set is empty"
        raise DataError(f"no prompts left: {reason}" if prompts.total_dropped else reason)
    return prompts


def load_prompts(
    args,
    tokenizer,
    *,
    source: str,
    split: str,
    input_key: str,
    output_key: str,
    max_items: int,
    check_reference: Callable[[Any], bool] | None = None,
) -> PromptSet:
    """One split rendered as the run renders every prompt (--prompt_template, chat template, length limit).

    `check_reference`: see `build_prompts`; pass the run's `oracle.check_reference` to drop rows
    whose reference the oracle cannot use.
    """
    return build_prompts(
        load_split(source, split),
        tokenizer,
        input_key=input_key,
        output_key=output_key,
        prompt_template=args.prompt_template,
        apply_chat_template=args.apply_chat_template,
        prompt_max_length=args.prompt_max_length,
        max_items=max_items,
        check_reference=check_reference,
    )
