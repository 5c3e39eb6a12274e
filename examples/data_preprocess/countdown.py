"""CountDown for oat's R1-zero GRPO recipe (examples/countdown_r1_zero_grpo.sh).

    python examples/data_preprocess/countdown.py --local_dir data/countdown \
        [--input ../shared/data/countdown/train_head.jsonl --train_size 10240 --test_size 1024]

Reads Jiayi-Pan/Countdown-Tasks-3to4 (one split, `train`: `target` and `nums`) or a local copy,
and splits it as TinyZero's countdown.py does: train = rows [0, train_size), test = the next
test_size rows (defaults 327,680 and 1,024). Writes train.jsonl and test.jsonl with `hf_row` (the
row's index in the hub's train split; a local copy that has the column keeps it), `target` and
`nums`. The recipe renders the prompt with `--prompt_template countdown` and gives the oracle
`--output_key target,nums`. The local head of 11,264 rows splits as 10,240 + 1,024, whose test rows
are the HF rows 10,240-11,263 (UFT's test split).
"""

from common import argument_parser, load, save

HUB_NAME = "Jiayi-Pan/Countdown-Tasks-3to4"


def main() -> None:
    parser = argument_parser(__doc__, HUB_NAME)
    parser.add_argument("--train_size", type=int, default=327_680, help="first rows for training (TinyZero's)")
    parser.add_argument("--test_size", type=int, default=1_024, help="the rows after them for testing (TinyZero's)")
    args = parser.parse_args()
    rows = load(args.input, "train")
    if "hf_row" not in rows.column_names:
        rows = rows.add_column("hf_row", list(range(len(rows))))
    needed = args.train_size + args.test_size
    if len(rows) < needed:
        parser.error(f"{args.input} has {len(rows)} rows; --train_size + --test_size need {needed}")
    rows = rows.select_columns(["hf_row", "target", "nums"])
    save(
        {"train": rows.select(range(args.train_size)), "test": rows.select(range(args.train_size, needed))},
        args.local_dir,
    )


if __name__ == "__main__":
    main()
