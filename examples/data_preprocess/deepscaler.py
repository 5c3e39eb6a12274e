"""DeepScaleR-Preview for the DeepScaleR PPO and CPGD recipes (examples/deepscaler_{ppo,cpgd}.sh).

    python examples/data_preprocess/deepscaler.py --local_dir data/deepscaler [--input ../shared/data/deepscaler/train_partial.jsonl.gz]

Reads agentica-org/DeepScaleR-Preview-Dataset (one split, `train`) or a local copy with its
`problem` and `answer` columns, and holds out a test split as siiRL's deepscaler.py does:
`train_test_split(test_size=0.1, seed=15)`. Writes train.jsonl and test.jsonl with `problem` and
`answer` (other columns such as `solution` are dropped: the reward reads only the answer).
siiRL appends " Let's think step by step and output the final within \\boxed{}." to the problem
and applies the chat template; the recipes do the same with `--prompt_template` and
`--apply-chat-template`. From the partial local copy (../shared/data/deepscaler) the split is
made over its rows (a single file is split `train`), so it differs from the split of the full dataset.
"""

from common import argument_parser, load, save

HUB_NAME = "agentica-org/DeepScaleR-Preview-Dataset"


def main() -> None:
    parser = argument_parser(__doc__, HUB_NAME)
    parser.add_argument("--test_size", type=float, default=0.1, help="held-out share (siiRL: 0.1)")
    parser.add_argument("--seed", type=int, default=15, help="seed of the split (siiRL: 15)")
    args = parser.parse_args()
    rows = load(args.input, "train").select_columns(["problem", "answer"])
    split = rows.train_test_split(test_size=args.test_size, seed=args.seed)
    save({"train": split["train"], "test": split["test"]}, args.local_dir)


if __name__ == "__main__":
    main()
