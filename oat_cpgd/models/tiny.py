"""A tiny Qwen2-architecture causal LM with a locally trained byte-level BPE tokenizer.

Everything is built on this machine (no download), so tests and demos run offline:

    python -m oat_cpgd.models.tiny --out DIR [--corpus FILE ...] [--hidden-size 256 ...]

The weights are random; the point is a real Hugging Face checkpoint that transformers,
vLLM and DeepSpeed load exactly like a released model.
"""

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

# Bump when the build changes, so cached folders built by older code get rebuilt.
BUILDER_VERSION = 1
MARKER_FILE = "tiny_model.json"

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, EOS_TOKEN]

# Qwen2's ChatML template, without the default system prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2's pre-tokenizer split: words with a leading space, single digits, punctuation runs.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

DEFAULT_SIZE = dict(
    hidden_size=256,
    intermediate_size=1024,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    vocab_size=1536,
    max_position_embeddings=2048,
)
# Wider than the usual 0.02 so next-token distributions are peaked: greedy decoding is
# then decided by clear margins, not by ties at float-noise level.
INITIALIZER_RANGE = 0.1


# --------------------------------------------------------------------------- corpus

NAMES = "Janet James Maria John Sarah Tom Lisa Carlos Emma Ben Aisha Mark Olivia Raj Nina Paul Grace Leo Mia".split()
PRONOUNS = "She He They".split()
ITEMS = (
    "apples eggs cookies books pencils marbles tickets cupcakes stickers shirts boxes bottles cards flowers "
    "cars toys candies oranges muffins pies cans bags chairs pizzas slices plants shells stamps"
).split()
PLACES = "store market school park bakery library farm office garden zoo beach museum restaurant".split()
UNITS = "hours minutes days weeks months years miles meters pounds liters feet inches gallons".split()
TIMES = "every morning|each week|on Monday|in the afternoon|after school|during the summer|every day".split("|")
# Frequent English words, so questions in plain English do not fall apart into single letters.
COMMON_WORDS = """
the of and to in is was that for it with as his on be at by this had not are but from or have an they which one
you were her all she there would their we him been has when who will more no if out so said what up its about
into than them can only other new some could time these two may then do first any my now such like our over man
me even most made after also did many before must through back years where much your way well down should because
each just those people how too little good very make world still own see men work long get here between both life
being under never day same another know while last might us great old year off come since against go came right
used take three himself few house use during without again place around however home small found thought went say
part once high upon school every does got left number course until always away something fact though water less
put think almost hand enough far took head yet better set told nothing night end why called find going look asked
later knew point next city business give group toward young let room side given several order possible rather
second face per among form important often things looked early white case become large big need four within felt
along children saw best ever least light thing seemed family want mind country area others done turned although open
help different whole half really already together money held keep sure real free question behind brought heard ago
moment known result street boy girl friends mother father sister brother teacher students class total cost price
costs pays spends earns saves buys sells shares gives takes makes bakes drives walks runs reads writes plays needs
wants twice times percent dollars cents remaining equal sum difference product value rest week month hour minute
pieces average amount calculate combined additional third quarter dozen fifth discount speed rate profit weight
distance points score sold bought spent paid decided received collected picked ordered started finished ate drove
Monday Tuesday Wednesday Thursday Friday Saturday Sunday birthday party trip lunch dinner breakfast food fruit
chocolate candy pizza cake milk coffee juice water animals dogs cats chickens fish birds trees garden team game
company customers job shop sale items bag pairs shoes balls paper red blue green yellow black age contains costs
currently previous complete entire full extra altogether including each per ounces grams kilograms kilometers
seconds degrees calories capacity length size tall wide rows jar tank bank account bills budget expenses
""".split()
STARTERS = "She He They It There In On After If One His Her The A Each Then So When How What".split()
COUNTDOWN_PROMPT = (
    "Using the numbers {nums}, create an equation that equals {target}. You can use basic arithmetic "
    "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> "
    "tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)
R1_PREFIX = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
    "the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
    "here </answer>.\nUser: {question}\nAssistant: <think>"
)
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def _countdown(rng: random.Random) -> str:
    nums = [rng.randint(1, 99) for _ in range(rng.choice([3, 4]))]
    expression = f" {rng.choice('+-*')} ".join(map(str, nums))
    target = eval(expression)  # only digits and + - * from above
    prompt = COUNTDOWN_PROMPT.format(nums=nums, target=target)
    response = f" {expression} = {target} </think> <answer> {expression} </answer>"
    if rng.random() < 0.5:  # the R1-zero template used by oat's countdown recipe
        return R1_PREFIX.format(question=prompt) + response
    return f"{prompt}\n<think>{response}"


def _arithmetic(rng: random.Random) -> str:
    a, b, c = rng.randint(1, 999), rng.randint(1, 99), rng.randint(2, 12)
    return rng.choice(
        [
            f"What is {a} + {b}? {a} + {b} = {a + b}. The answer is {a + b}.",
            f"Compute {a} - {b}. We have {a} - {b} = {a - b}, so the answer is $\\boxed{{{a - b}}}$.",
            f"{b} * {c} = {b * c}, and {b * c} / {c} = {b}.",
            f"Solve for $x$: ${c}x + {b} = {c * a + b}$. Subtracting {b} gives ${c}x = {c * a}$, so $x = \\boxed{{{a}}}$.",
            f"Find $\\frac{{{b}}}{{{c}}} + {a}$. {BOXED_INSTRUCTION} The answer is $\\boxed{{\\frac{{{b + a * c}}}{{{c}}}}}$.",
            f"If $f(x) = x^2 + {b}$, what is $f({c})$? $f({c}) = {c}^2 + {b} = {c * c + b}$. Final answer: $\\boxed{{{c * c + b}}}$",
            f"Let $y = \\sqrt{{{c * c}}} + {a}$. Then $y = {c} + {a} = {c + a}$.",
        ]
    )


def _word_problem(rng: random.Random) -> str:
    """A GSM8K-style question, sometimes with a solution ending in `#### N`."""
    name, other = rng.sample(NAMES, 2)
    item, place, unit, when = rng.choice(ITEMS), rng.choice(PLACES), rng.choice(UNITS), rng.choice(TIMES)
    a, b, price = rng.randint(2, 60), rng.randint(2, 30), rng.randint(2, 20)
    question = rng.choice(
        [
            f"{name} has {a} {item}. {name} buys {b} more {item} at the {place}. How many {item} does {name} have now?",
            f"{name} sells {a} {item} {when} for ${price} each. How much money does {name} make?",
            f"{name} spends {a} {unit} at the {place} and {other} spends {b} {unit} there. "
            f"How many {unit} do they spend in total?",
            f"There are {a + b} {item} in a box. {name} gives {b} of them to {other}. How many {item} are left?",
            f"{name} reads {a} pages {when}. How many pages does {name} read in {b} days?",
        ]
    )
    total = a + b
    solution = f"{name} has {a} + {b} = <<{a}+{b}={total}>>{total} {item}.\n#### {total}"
    return f"{question}\n{solution}" if rng.random() < 0.6 else question


def _english(rng: random.Random) -> str:
    """A word problem in varied wording, or a sentence of frequent words."""
    name, other, pronoun = rng.choice(NAMES), rng.choice(NAMES), rng.choice(PRONOUNS)
    item, place, unit = rng.choice(ITEMS), rng.choice(PLACES), rng.choice(UNITS)
    a, b, p = rng.randint(2, 90), rng.randint(2, 12), rng.choice([10, 20, 25, 30, 40, 50, 75])
    templates = [
        f"{name} wants to buy {a} {item} at the {place}. Each one costs ${b}, and {pronoun.lower()} already "
        f"has ${a}. How much more money does {name} need?",
        f"A box holds {a} {item}. If there are {b} boxes, how many {item} are there in total?",
        f"{name} is {a} years old. {other} is twice as old. How old will {other} be in {b} years?",
        f"In a class of {a} students, {p}% are girls. How many boys are in the class?",
        f"{name} earns ${a} per hour and works {b} hours a week. How much does {pronoun.lower()} earn in a month?",
        f"The price of a ticket was ${a}, and it increased by {p}%. What is the new price?",
        f"{pronoun} walked {a} {unit} on the first day and half as far on the second day, then {b} {unit} more.",
    ]
    if rng.random() < 0.5:
        return rng.choice(templates)
    words = [rng.choice(STARTERS)] + [rng.choice(COMMON_WORDS) for _ in range(rng.randint(5, 15))]
    return " ".join(words) + rng.choice(".?!")


def default_corpus(seed: int = 0, num_lines: int = 4000) -> list[str]:
    """Generated text shaped like this project's prompts: countdown, math, GSM8K, plain English."""
    rng = random.Random(seed)
    makers = [_countdown, _arithmetic, _word_problem, _english]
    return [rng.choice(makers)(rng) for _ in range(num_lines)]


def _texts_in(value: Any) -> Iterator[str]:
    """String values of a JSON value (recursively); a list of numbers becomes its text."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts_in(item)
    elif isinstance(value, list):
        if value and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            yield json.dumps(value)
        else:
            for item in value:
                yield from _texts_in(item)


def read_corpus(files: Sequence[str | Path]) -> list[str]:
    """Texts from .txt (one per line), .jsonl (one per row) and .json files; .gz is allowed."""
    texts: list[str] = []
    for file in map(Path, files):
        opener = gzip.open if file.suffix == ".gz" else open
        kind = Path(file.stem).suffix if file.suffix == ".gz" else file.suffix
        with opener(file, "rt", encoding="utf-8") as f:
            if kind == ".jsonl":
                texts += ["\n".join(_texts_in(json.loads(line))) for line in f if line.strip()]
            elif kind == ".json":
                texts += list(_texts_in(json.load(f)))
            else:
                texts += [line for line in f if line.strip()]
    return texts


# --------------------------------------------------------------------------- build


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Qwen2Tokenizer:
    """Byte-level BPE with ChatML special tokens and chat template; no text is out of vocabulary.

    transformers' AutoTokenizer loads every `qwen2` model as `Qwen2Tokenizer`, which keeps
    only vocab and merges from tokenizer.json and rebuilds Qwen2's pipeline around them
    (NFC normaliser, digit-splitting regex, byte-level). We train with that same pipeline,
    so the tokenizer trained here is exactly the one transformers and vLLM load.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    bpe = json.loads(tokenizer.to_str())["model"]
    return Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=[tuple(merge) for merge in bpe["merges"]],
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,  # keep decode(encode(text)) == text
    )


def build_tiny_model(
    out_dir: str | Path,
    *,
    corpus_files: Sequence[str | Path] | None = None,
    seed: int = 0,
    hidden_size: int = DEFAULT_SIZE["hidden_size"],
    intermediate_size: int = DEFAULT_SIZE["intermediate_size"],
    num_layers: int = DEFAULT_SIZE["num_layers"],
    num_heads: int = DEFAULT_SIZE["num_heads"],
    num_kv_heads: int = DEFAULT_SIZE["num_kv_heads"],
    vocab_size: int = DEFAULT_SIZE["vocab_size"],
    max_position_embeddings: int = DEFAULT_SIZE["max_position_embeddings"],
) -> Path:
    """Build the tokenizer and random-weight model into `out_dir` (HF format) and return it.

    Returns at once if `out_dir` already holds a model built from the same options and corpus.
    """
    out_dir = Path(out_dir)
    texts = read_corpus(corpus_files) if corpus_files else default_corpus(seed)
    marker = {
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "corpus_sha256": hashlib.sha256("\0".join(texts).encode()).hexdigest(),
    }
    marker_path = out_dir / MARKER_FILE
    complete = all((out_dir / name).exists() for name in [MARKER_FILE, "config.json", "model.safetensors"])
    if complete and json.loads(marker_path.read_text()) == marker:
        return out_dir

    tokenizer = train_tokenizer(texts, vocab_size)
    tokenizer.model_max_length = max_position_embeddings
    eos_id, pad_id = tokenizer.convert_tokens_to_ids([EOS_TOKEN, PAD_TOKEN])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=INITIALIZER_RANGE,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=[eos_id, pad_id], pad_token_id=pad_id)

    # Save into a scratch folder, then move files in with the marker last: a crash or a
    # concurrent build never leaves a folder that looks complete but is not.
    out_dir.mkdir(parents=True, exist_ok=True)
    marker_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as scratch:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        Path(scratch, MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        for name in sorted(os.listdir(scratch), key=lambda name: name == MARKER_FILE):
            shutil.move(os.path.join(scratch, name), out_dir / name)
    return out_dir


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (HF format)")
    parser.add_argument("--corpus", type=Path, nargs="+", help=".txt/.jsonl/.json files for the tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    for name, default in DEFAULT_SIZE.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    args = vars(parser.parse_args(argv))
    out_dir = build_tiny_model(args.pop("out"), corpus_files=args.pop("corpus"), **args)
    print(out_dir)


if __name__ == "__main__":
    main()
