"""GSM8K for oat's PPO recipe (examples/gsm8k_ppo.sh).

    python examples/data_preprocess/gsm8k.py --local_dir data/gsm8k [--input ../shared/data/gsm8k]

Reads openai/gsm8k (config `main`) or a local copy with its `question` and `answer` columns, and
writes train.jsonl and test.jsonl with `question`, `answer` (the worked solution, unchanged) and
`final_answer`: the text after the last `####`, stripped, thousands separators removed
(`1,080` -> `1080`), as oat's `--output_key final_answer` and verl's gsm8k.py take it.
The recipe passes `--input_key question --output_key final_answer` and no prompt template
(oat's command applies only the chat template).
"""

from common import argument_parser, load, save

HUB_NAME = "openai/gsm8k"


def final_answer(solution: str) -> str:
    return solution.rsplit("####", 1)[-1].strip().replace(",", "")


def main() -> None:
    args = argument_parser(__doc__, HUB_NAME).parse_args()
    splits = {}
    for split in ("train", "test"):
        rows = load(args.input, split, hub_config="main")
        rows = rows.map(lambda row: {"final_answer": final_answer(row["answer"])})
        splits[split] = rows.select_columns(["question", "answer", "final_answer"])
    save(splits, args.local_dir)


if __name__ == "__main__":
    main()
