"""MATH-500, an evaluation set for the maths recipes (`--eval_data DIR --eval_split test`).

    python examples/data_preprocess/math500.py --local_dir data/math500 [--input ../shared/data/math500]

Reads HuggingFaceH4/MATH-500 (split `test`) or a local copy, and writes test.jsonl with its
columns `problem`, `solution`, `answer`, `subject`, `level` and `unique_id`, rows unchanged. Score
it with `--input_key problem --output_key answer --oracle math --prompt_template boxed`.
"""

from common import argument_parser, load, save

HUB_NAME = "HuggingFaceH4/MATH-500"
COLUMNS = ["problem", "solution", "answer", "subject", "level", "unique_id"]


def main() -> None:
    args = argument_parser(__doc__, HUB_NAME).parse_args()
    save({"test": load(args.input, "test").select_columns(COLUMNS)}, args.local_dir)


if __name__ == "__main__":
    main()
